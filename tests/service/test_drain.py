"""A worker's drain on SIGTERM, with real redis-server, gunicorn and workers: the job it runs
finishes, it exits 0, and it takes no new job; the job it left queued runs on the next worker.
This is what an orchestrator's stop (Kubernetes, a worker pool, `docker stop`) relies on within its
grace period (deploy/k8s/base/worker.yaml)."""
import signal
import tempfile
import time
from pathlib import Path

import requests

from tests.support.servers import gunicorn, redis_server, workers

RUNNING = "import time\ndef main():\n    time.sleep(3)\n    return 'finished while draining'\n"
GRACE_S = 30
"""Well within the manifests' grace period, and past a 3 s job and a worker's exit."""


def state(base: str, job_id: str) -> dict:
    return requests.get(f"{base}/jobs/{job_id}", timeout=30).json()


def wait_state(base: str, job_id: str, status: str, within_s: float = 60) -> dict:
    deadline = time.monotonic() + within_s
    while (found := state(base, job_id))["status"] != status:
        assert time.monotonic() < deadline, found
        time.sleep(0.1)
    return found


def test_sigterm_finishes_the_running_job_takes_no_other_and_exits_0() -> None:
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as url, \
            gunicorn({"REDIS_URL": url, "PYSANDBOX_EXECUTE_VIA_QUEUE": "true"}, wait_healthy=False) as base:
        with workers(url, 1, {"PYSANDBOX_WARM_JAILS": "0"}) as (worker,):
            submit = lambda script: requests.post(  # noqa: E731
                f"{base}/execute?async=1", json={"script": script}, timeout=30).json()["id"]
            running = submit(RUNNING)
            wait_state(base, running, "running")
            waiting = submit("def main():\n    return 'ran on the next worker'\n")
            stopped = time.monotonic()
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=GRACE_S) == 0
            took = time.monotonic() - stopped
            finished = state(base, running)
            assert finished["status"] == "finished", finished
            assert finished["result"] == "finished while draining"
            assert state(base, waiting)["status"] == "queued", "the stopping worker took a new job"
            print(f"worker drained its 3 s job and exited 0 in {took:.1f} s")
        with workers(url, 1, {"PYSANDBOX_WARM_JAILS": "0"}):
            assert wait_state(base, waiting, "finished")["result"] == "ran on the next worker"
