"""gunicorn settings: one process of threads, so the capacity limit is one counter."""
import os
import shutil
import signal
import tempfile
from typing import Any

from shared.settings import load

# prometheus_client's multiprocess mode: every process that counts writes its values in this
# directory, and GET /metrics adds them up. It must be set before anything imports
# prometheus_client (importing shared.settings below imports the api package, which does), and be
# empty at start (stale files would count a previous run's runs). docker/supervise.py makes
# one for gunicorn and the RQ workers together; else gunicorn makes its own, fresh, in
# $TMPDIR (a tmpfs in compose), and removes it when it stops.
_own_multiproc_dir = None
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _own_multiproc_dir = tempfile.mkdtemp(prefix="pysandbox-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _own_multiproc_dir

bind = f"0.0.0.0:{os.environ.get('PORT', '8080')}"
workers = 1
worker_class = "gthread"
threads = 3 * load().max_concurrent_runs + 4
"""Slots + the most requests that may wait for one (2 x slots, api/capacity.py) + 4: a request
past capacity gets a quick 503, and a light client's request a thread, never a wait in the accept queue."""
timeout = 60
keepalive = 5
"""Seconds an idle connection stays open: longer than nginx keeps one to reuse (docker/nginx.conf)."""
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
"""The worker's heartbeat file, touched on every turn of its loop: on tmpfs, not the image's
overlay /tmp (gunicorn's documentation advises this for containers)."""
graceful_timeout = 35
control_socket_disable = True
"""gunicorn's admin socket: unused, and it needs a writable home."""
accesslog = "-"
errorlog = "-"
logger_class = "api.logs.GunicornLogger"
"""JSON lines (PYSANDBOX_LOG_FORMAT=json, the default), gunicorn's own format for text."""


def post_worker_init(worker: Any) -> None:
    """SIGTERM (gunicorn's graceful stop) marks the app draining before gunicorn's own handler
    runs: a request the worker still answers while it stops (in flight, or on a kept-alive
    connection) finds /readyz 503 (api/probes.py)."""
    from api.service import service

    state, stop = service(worker.wsgi), worker.handle_exit

    def draining(signum: int, frame: Any) -> None:
        state.draining.set()
        stop(signum, frame)

    signal.signal(signal.SIGTERM, draining)


def child_exit(server: Any, worker: Any) -> None:
    """A gunicorn worker's live gauges (warm jails, run slots) leave with it."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    """Remove the metrics directory gunicorn made for itself."""
    if _own_multiproc_dir is not None:
        shutil.rmtree(_own_multiproc_dir, ignore_errors=True)
