"""Sessions in queue mode, as compose runs them: real redis-server, real gunicorn with
PYSANDBOX_EXECUTE_VIA_QUEUE (no jail in the API), real RQ workers holding the sessions' jails."""
import hashlib
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from redis import Redis

from shared.session_queue import SessionRecord, worker_key
from tests.service.test_queue import kill_tree
from tests.support.servers import free_port, gunicorn, redis_server, workers

KEYS = {"alice": "alice-key-0123456789abcdef", "bob": "bob-key-0123456789abcdef"}
ALICE = {"Authorization": f"Bearer {KEYS['alice']}"}
BOB = {"Authorization": f"Bearer {KEYS['bob']}"}


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[str, str]]:
    """(the API's URL, Redis's URL): an API that only enqueues, and no worker yet."""
    keys = ",".join(f"{name}:{hashlib.sha256(key.encode()).hexdigest()}" for name, key in KEYS.items())
    with redis_server(tmp_path_factory.mktemp("redis")) as redis_url:
        env = {"REDIS_URL": redis_url, "PYSANDBOX_EXECUTE_VIA_QUEUE": "true", "PYSANDBOX_API_KEYS": keys,
               "PYSANDBOX_MAX_SESSIONS": "20", "PYSANDBOX_MAX_SESSIONS_PER_CLIENT": "10",
               "PYSANDBOX_MAX_TIMEOUT_S": "5"}
        with gunicorn(env, wait_healthy=False) as url:
            yield url, redis_url


@contextmanager
def session_workers(redis_url: str, count: int, log_path: Path,
                    env: dict[str, str] | None = None) -> Iterator[list[subprocess.Popen]]:
    """workers(), once exactly `count` of them serve sessions (RQ's registry may still list the
    workers of an earlier test)."""
    redis = Redis.from_url(redis_url)
    with workers(redis_url, count, env, log_path=log_path) as procs:
        deadline = time.monotonic() + 30
        while len(list(redis.scan_iter(match=worker_key("*")))) != count:
            assert time.monotonic() < deadline, "the workers do not serve sessions"
            time.sleep(0.1)
        yield procs


def create(url: str, headers: dict[str, str] = ALICE, **body) -> dict:
    answer = requests.post(f"{url}/sessions", json=body, headers=headers, timeout=30)
    assert answer.status_code == 201, answer.text
    return answer.json()


def call(url: str, session_id: str, script: str, headers: dict[str, str] = ALICE,
         **body) -> requests.Response:
    return requests.post(f"{url}/sessions/{session_id}/execute", json={"script": script, **body},
                         headers=headers, timeout=30)


def test_without_a_worker_serving_sessions_it_is_501(served):
    url, _ = served
    answer = requests.post(f"{url}/sessions", json={}, headers=ALICE, timeout=30)
    assert answer.status_code == 501 and answer.json()["error"]["code"] == "sessions_unavailable"


def test_state_is_kept_from_call_to_call_and_delete_ends_it(served, tmp_path):
    url, redis_url = served
    metrics_port = free_port()
    with session_workers(redis_url, 1, tmp_path / "workers.log",
                         {"PYSANDBOX_WORKER_METRICS_PORT": str(metrics_port)}):
        session = create(url)
        assert session["state"] == "open" and session["usage"]["calls"] == 0
        first = call(url, session["id"], "import json\nx = 41\nopen('f.txt', 'w').write('kept')")
        assert first.status_code == 200, first.text
        second = call(url, session["id"], "def main():\n    return [json.dumps(x + 1), open('f.txt').read()]")
        assert second.status_code == 200 and second.json()["result"] == ["42", "kept"]
        assert second.json()["session"]["usage"]["calls"] == 2
        state = requests.get(f"{url}/sessions/{session['id']}", headers=ALICE, timeout=10).json()
        assert state["state"] == "open" and state["usage"]["calls"] == 2
        failed = call(url, session["id"], "def main():\n    raise KeyError('k')")
        assert failed.status_code == 422 and failed.json()["error"]["code"] == "main_error"
        assert call(url, session["id"], "x").json()["result"] == 41
        deleted = requests.delete(f"{url}/sessions/{session['id']}", headers=ALICE, timeout=10)
        assert deleted.status_code == 200 and deleted.json()["reason"] == "deleted"
        after = call(url, session["id"], "x")
        assert after.status_code == 410 and after.json()["error"]["reason"] == "deleted"
        metrics = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        assert 'pysandbox_sessions_ended_total{reason="deleted"} 1.0' in metrics
        assert "pysandbox_sessions_open 0.0" in metrics


def test_a_session_is_its_clients_alone(served, tmp_path):
    url, redis_url = served
    with session_workers(redis_url, 1, tmp_path / "workers.log"):
        mine = create(url)
        call(url, mine["id"], "secret = 'alice'")
        for answer in (requests.get(f"{url}/sessions/{mine['id']}", headers=BOB, timeout=10),
                       call(url, mine["id"], "secret", headers=BOB),
                       requests.delete(f"{url}/sessions/{mine['id']}", headers=BOB, timeout=10),
                       requests.get(f"{url}/sessions/no-such-id", headers=ALICE, timeout=10)):
            assert answer.status_code == 404 and answer.json()["error"]["code"] == "session_not_found"
        theirs = create(url, BOB)
        assert call(url, theirs["id"], "'secret' in globals()", headers=BOB).json()["result"] is False
        assert call(url, mine["id"], "secret").json()["result"] == "alice"
        idle = create(url, idle_timeout_s=1)
        time.sleep(2.5)  # the worker's reaper looks every second
        answer = requests.get(f"{url}/sessions/{idle['id']}", headers=ALICE, timeout=10)
        assert answer.status_code == 410 and answer.json()["error"]["reason"] == "idle"


def test_sessions_spread_over_workers_and_a_killed_one_is_lost_quickly(served, tmp_path):
    url, redis_url = served
    redis = Redis.from_url(redis_url)
    with session_workers(redis_url, 2, tmp_path / "workers.log") as procs:
        sessions = [create(url)["id"] for _ in range(8)]
        for session_id in sessions:
            assert call(url, session_id, f"tag = {session_id!r}").status_code == 200
        for session_id in sessions:  # each call reaches the worker, and the jail, holding its session
            assert call(url, session_id, "tag").json()["result"] == session_id
        records = [SessionRecord.load(redis, session_id) for session_id in sessions]
        held = {record.id: record.worker for record in records if record is not None}
        names = sorted(set(held.values()))
        assert len(names) == 2, held
        victim = next(proc for proc in procs if f"-{proc.pid}-" in names[0])
        kill_tree(victim.pid)  # as a container kill does: the worker and its jails
        started = time.monotonic()
        for session_id, worker in held.items():
            answer = call(url, session_id, "tag")
            if worker == names[0]:
                assert answer.status_code == 410 and answer.json()["error"]["reason"] == "lost"
            else:
                assert answer.status_code == 200 and answer.json()["result"] == session_id
        assert time.monotonic() - started < 5  # the first lost one within 5 s, the rest at once
        health = requests.get(f"{url}/health", timeout=10).json()
        assert health["sessions"]["open"] == sum(worker == names[1] for worker in held.values())


def test_a_worker_stopped_gracefully_ends_its_sessions(served, tmp_path):
    url, redis_url = served
    with session_workers(redis_url, 1, tmp_path / "workers.log"):
        session = create(url)
    answer = requests.get(f"{url}/sessions/{session['id']}", headers=ALICE, timeout=10)
    assert answer.status_code == 410 and answer.json()["error"]["reason"] == "shutdown"
    log = Path(tmp_path / "workers.log").read_text()
    assert "session ended: shutdown" in log


def test_calls_queued_in_a_killed_workers_session_fail_session_ended_lost(served, tmp_path):
    url, redis_url = served
    with session_workers(redis_url, 1, tmp_path / "workers.log") as procs:
        session = create(url)
        jobs = [requests.post(f"{url}/sessions/{session['id']}/execute?async=1", json={"script": script},
                              headers=ALICE, timeout=30).json()["id"]
                for script in ("import time\ntime.sleep(30)", "1")]
        deadline = time.monotonic() + 10
        while requests.get(f"{url}/jobs/{jobs[0]}", headers=ALICE, timeout=10).json()["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        kill_tree(procs[0].pid)
        deadline = time.monotonic() + 8  # the worker's key expires 3 s after its last beat
        for job_id in jobs:
            while (state := requests.get(f"{url}/jobs/{job_id}", headers=ALICE, timeout=10).json())[
                    "status"] in ("queued", "running"):
                assert time.monotonic() < deadline, state
                time.sleep(0.1)
            assert state["status"] == "failed" and state["error"]["code"] == "session_ended"
            assert state["error"]["reason"] == "lost"
