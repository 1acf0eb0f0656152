"""gunicorn settings: one process of threads, so the capacity limit is one counter."""
import os

from api.config import load_config

bind = f"0.0.0.0:{os.environ.get('PORT', '8080')}"
workers = 1
worker_class = "gthread"
threads = 3 * int(load_config(None)["MAX_CONCURRENT_RUNS"]) + 4
"""Slots + the most requests that may wait for one (2 x slots, api/capacity.py) + 4: a request
past capacity gets a quick 503, and a light client's request a thread, never a wait in the accept queue."""
timeout = 60
graceful_timeout = 35
control_socket_disable = True
"""gunicorn's admin socket: unused, and it needs a writable home."""
accesslog = "-"
errorlog = "-"
