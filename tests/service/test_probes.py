"""The probes mean different things (api/probes.py), against real gunicorn, redis-server and a worker:
liveness stays 200 through a Redis outage while readiness goes 503 and comes back by itself; readiness
goes 503 once gunicorn is told to stop; a worker's alive file feeds the exec probe of docs/operating.md."""
import hashlib
import os
import signal
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import requests

from api import create_app
from tests.support.servers import free_port, gunicorn, redis_server, workers

PROBES = ("/livez", "/readyz", "/startupz")
WORKER_PROBE = "find {path} -mmin -1 | grep -q ."
"""The exec probe docs/operating.md and deploy/k8s give a worker (run through `sh -c`)."""


def wait_status(url: str, status: int, within_s: float = 30) -> requests.Response:
    """GET url until it answers `status`; the answer."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            answer = requests.get(url, timeout=10)
            if answer.status_code == status:
                return answer
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, f"{url} never answered {status}"
        time.sleep(0.2)


def test_probes_are_public_and_never_rate_limited() -> None:
    key = "k" * 43
    app = create_app({"REDIS_URL": "", "WARM_JAILS": 0, "RATE_LIMIT": "1/minute",
                      "API_KEYS": f"a:{hashlib.sha256(key.encode()).hexdigest()}"})
    client = app.test_client()
    for path in PROBES * 3:
        answer = client.get(path)
        assert answer.status_code == 200, (path, answer.get_json())
        assert answer.get_json() == {"status": "ok", "reason": None}


def test_an_enqueue_only_api_is_live_through_a_redis_outage_and_ready_again_after() -> None:
    """No worker at all: still ready (it can take jobs for workers yet to start). Redis stopped:
    live 200, ready 503 redis_unreachable; Redis back on the same port: ready 200 by itself."""
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as first_redis:
        port, data = free_port(), Path(tmp)
        url = first_redis.enter_context(redis_server(data, port))
        env = {"REDIS_URL": url, "PYSANDBOX_EXECUTE_VIA_QUEUE": "true"}
        with gunicorn(env, wait_healthy=False) as base:
            for path in PROBES:
                wait_status(base + path, 200)
            assert requests.get(f"{base}/health", timeout=10).status_code == 503  # no worker: as before
            first_redis.close()
            for _ in range(3):
                assert requests.get(f"{base}/livez", timeout=10).status_code == 200
                ready = requests.get(f"{base}/readyz", timeout=10)
                assert ready.status_code == 503 and ready.json()["reason"] == "redis_unreachable", ready.text
                assert requests.get(f"{base}/startupz", timeout=10).status_code == 200
            with redis_server(data, port):
                wait_status(f"{base}/readyz", 200, within_s=15)
                assert requests.get(f"{base}/livez", timeout=10).status_code == 200


def test_an_api_that_runs_scripts_is_started_once_warm_and_not_ready_once_told_to_stop() -> None:
    """startupz 200 once the warm jails are up; a Redis outage leaves it ready (sync runs need no
    Redis); SIGTERM to gunicorn: a request on a kept-alive connection finds /readyz 503 draining."""
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as first_redis:
        url = first_redis.enter_context(redis_server(Path(tmp)))
        pid_file = Path(tmp) / "gunicorn.pid"
        env = {"REDIS_URL": url, "PYSANDBOX_WARM_JAILS": "1", "GUNICORN_CMD_ARGS": f"--pid {pid_file}"}
        with gunicorn(env) as base:
            started = wait_status(f"{base}/startupz", 200)
            assert started.json()["reason"] is None
            first_redis.close()
            assert requests.get(f"{base}/readyz", timeout=10).status_code == 200
            assert requests.get(f"{base}/livez", timeout=10).status_code == 200
            with requests.Session() as session:
                assert session.get(f"{base}/readyz", timeout=10).status_code == 200
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
                time.sleep(0.5)  # the arbiter passes SIGTERM on to its worker
                ready = session.get(f"{base}/readyz", timeout=10)  # the same, kept-alive connection
                assert ready.status_code == 503 and ready.json()["reason"] == "draining", ready.text


def test_a_workers_alive_file_feeds_its_exec_probe() -> None:
    """The file appears once the worker's self-test passed, stays fresh (also with Redis gone), and
    the probe command fails once it is older than a minute."""
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as first_redis:
        url = first_redis.enter_context(redis_server(Path(tmp)))
        alive = Path(tmp) / "worker.alive"
        probe = ["sh", "-c", WORKER_PROBE.format(path=alive)]
        assert subprocess.run(probe).returncode != 0  # no file yet: not started
        with workers(url, 1, {"PYSANDBOX_WORKER_ALIVE_FILE": str(alive), "PYSANDBOX_WARM_JAILS": "0"}):
            assert subprocess.run(probe).returncode == 0
            first_redis.close()
            touched = alive.stat().st_mtime
            time.sleep(6)  # past ALIVE_EVERY_S
            assert alive.stat().st_mtime > touched, "the beat stopped while Redis was away"
            assert subprocess.run(probe).returncode == 0
        stale = time.time() - 120
        os.utime(alive, (stale, stale))  # what a hung worker leaves behind
        assert subprocess.run(probe).returncode != 0
