"""gunicorn settings: one process of threads, so the capacity limit is one counter."""
import os

from api.config import load_config

bind = f"0.0.0.0:{os.environ.get('PORT', '8080')}"
workers = 1
worker_class = "gthread"
threads = 2 * int(load_config(None)["MAX_CONCURRENT_RUNS"]) + 4
"""More threads than run slots: a request past capacity gets a quick 503, not a wait in the accept queue."""
timeout = 60
graceful_timeout = 35
control_socket_disable = True
"""gunicorn's admin socket: unused, and it needs a writable home."""
accesslog = "-"
errorlog = "-"
