"""Canceling runs: the jail's cancel event (one-off and warm), and DELETE /jobs/<id> through a real
redis-server and real workers."""
import threading
import time
from collections.abc import Iterator

import pytest

from api import create_app
from jail import Limits, Status
from jail.nsjail import run_once
from jail.warm import START_TIMEOUT_S, WarmPool
from tests.support.servers import redis_server, workers

HOG = ("import os\n"
       "def main():\n"
       "    for _ in range(3):\n"
       "        if os.fork() == 0:\n"
       "            while True: pass\n"
       "    print('children spinning', flush=True)\n"
       "    while True: pass\n")
"""Holds CPU in four processes until killed."""


def canceled_after(delay_s: float) -> threading.Event:
    event = threading.Event()
    threading.Timer(delay_s, event.set).start()
    return event


@pytest.mark.parametrize("kind", ["one-off", "warm"])
def test_a_cancel_event_kills_the_jail_within_a_second(kind):
    limits = Limits(timeout_s=20.0)
    pool = WarmPool(1, limits.tmp_mb) if kind == "warm" else None
    try:
        started = time.monotonic()
        cancel = canceled_after(1.0)
        outcome = pool.run(HOG, limits, wait_s=START_TIMEOUT_S, cancel=cancel) if pool else run_once(
            HOG, limits, cancel=cancel)
        assert outcome is not None and outcome.status is Status.CANCELED, outcome
        assert "children spinning" in outcome.stdout
        assert time.monotonic() - started < 1.0 + 1.0 + (START_TIMEOUT_S if pool else 0)
        assert outcome.duration_ms < 2_000, outcome
        if pool:  # the pool replaces the killed jail and serves the next run
            after = pool.run("def main(): return 2", Limits(), wait_s=START_TIMEOUT_S)
            assert after is not None and after.result == 2
    finally:
        if pool:
            pool.close()


@pytest.fixture
def redis_url(tmp_path) -> Iterator[str]:
    with redis_server(tmp_path) as url:
        yield url


def submit(client, script: str, **options) -> str:
    response = client.post("/execute?async=1", json={"script": script, **options},
                           headers={"X-Request-ID": "client-req.1"})
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def wait_for(client, job_id: str, status: str, within_s: float = 30) -> dict:
    deadline = time.monotonic() + within_s
    while (body := client.get(f"/jobs/{job_id}").get_json())["status"] != status:
        assert time.monotonic() < deadline, body
        time.sleep(0.05)
    return body


def test_delete_kills_a_running_job_and_its_worker_takes_the_next(redis_url):
    client = create_app({"REDIS_URL": redis_url}).test_client()
    with workers(redis_url, 1):
        running = submit(client, HOG, timeout=20)
        waiting = submit(client, "def main():\n    print('ran')\n    return 1")
        wait_for(client, running, "running")
        time.sleep(0.5)  # the children are spinning
        assert client.get(f"/jobs/{waiting}").get_json()["status"] == "queued"
        response = client.delete(f"/jobs/{waiting}")
        assert response.status_code == 200 and response.get_json()["status"] == "canceled"
        asked = time.monotonic()
        response = client.delete(f"/jobs/{running}")
        body = response.get_json()
        assert response.status_code == 200 and body["status"] == "canceled", body
        assert time.monotonic() - asked < 1.5
        assert body["error"]["code"] == "canceled" and "children spinning" in body["stdout"]
        assert body["request_id"] == "client-req.1"
        after = submit(client, "def main(): return 'next'")
        assert wait_for(client, after, "finished", within_s=15)["result"] == "next"
    never_ran = client.get(f"/jobs/{waiting}").get_json()
    assert never_ran["status"] == "canceled" and "stdout" not in never_ran, never_ran
    again = client.delete(f"/jobs/{running}")  # idempotent: the same state again
    assert again.status_code == 200 and again.get_json() == client.get(f"/jobs/{running}").get_json()
    done = client.delete(f"/jobs/{after}")
    assert done.status_code == 409 and done.get_json()["error"]["code"] == "job_finished"
    missing = client.delete("/jobs/12345678-1234-1234-1234-123456789012")
    assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "job_not_found"


def test_a_job_canceled_before_a_worker_exists_never_runs(redis_url):
    client = create_app({"REDIS_URL": redis_url}).test_client()
    job_id = submit(client, "def main():\n    print('ran')\n    return 1")
    assert client.delete(f"/jobs/{job_id}").get_json()["status"] == "canceled"
    with workers(redis_url, 1):
        probe = submit(client, "def main(): return 'probe'")
        wait_for(client, probe, "finished")
    body = client.get(f"/jobs/{job_id}").get_json()
    assert body["status"] == "canceled" and "stdout" not in body, body
