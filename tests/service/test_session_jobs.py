"""A session's queued calls (`POST /sessions/<id>/execute?async=1`) as jobs, in both run modes where
sessions live: gunicorn holding the sessions beside a real redis-server (one container), and an
API that only enqueues with a real RQ worker holding them (compose). Real nsjail, redis, gunicorn."""
import hashlib
import time
from collections.abc import Iterator

import pytest
import requests

from tests.service.test_queue_sessions import session_workers
from tests.support.servers import gunicorn, redis_server

KEYS = {"alice": "alice-key-0123456789abcdef", "bob": "bob-key-0123456789abcdef"}
ALICE = {"Authorization": f"Bearer {KEYS['alice']}"}
BOB = {"Authorization": f"Bearer {KEYS['bob']}"}
PER_CLIENT = 4
"""PYSANDBOX_MAX_QUEUED_JOBS_PER_CLIENT here."""


@pytest.fixture(scope="module", params=["one_container", "queue"])
def url(request, tmp_path_factory) -> Iterator[str]:
    """The API's URL, in each run mode."""
    keys = ",".join(f"{name}:{hashlib.sha256(key.encode()).hexdigest()}" for name, key in KEYS.items())
    with redis_server(tmp_path_factory.mktemp("redis")) as redis_url:
        env = {"REDIS_URL": redis_url, "PYSANDBOX_API_KEYS": keys, "PYSANDBOX_MAX_TIMEOUT_S": "10",
               "PYSANDBOX_MAX_QUEUED_JOBS_PER_CLIENT": str(PER_CLIENT), "PYSANDBOX_SPARE_SESSION": "false",
               "PYSANDBOX_WARM_JAILS": "1"}
        if request.param == "one_container":
            with gunicorn(env) as served:
                yield served
        else:
            env["PYSANDBOX_EXECUTE_VIA_QUEUE"] = "true"
            log = tmp_path_factory.mktemp("workers") / "workers.log"
            with session_workers(redis_url, 1, log), gunicorn(env, wait_healthy=False) as served:
                yield served


@pytest.fixture
def session(url) -> Iterator[str]:
    made = requests.post(f"{url}/sessions", json={"memory_mb": 256}, headers=ALICE, timeout=30)
    assert made.status_code == 201, made.text
    yield made.json()["id"]
    requests.delete(f"{url}/sessions/{made.json()['id']}", headers=ALICE, timeout=30)


def call(url: str, session_id: str, script: str, headers: dict[str, str] = ALICE, queued: bool = False,
         **body) -> requests.Response:
    return requests.post(f"{url}/sessions/{session_id}/execute" + ("?async=1" if queued else ""),
                         json={"script": script, **body}, headers=headers, timeout=30)


def submit(url: str, session_id: str, script: str, **body) -> str:
    """Queue a call; its job's id."""
    answer = call(url, session_id, script, queued=True, **body)
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    assert answer.json()["status"] == "queued" and answer.headers["Location"] == f"/jobs/{job_id}"
    return job_id


def job(url: str, job_id: str, headers: dict[str, str] = ALICE) -> dict:
    return requests.get(f"{url}/jobs/{job_id}", headers=headers, timeout=10).json()


def ended(url: str, job_id: str, within_s: float = 30) -> dict:
    """The job's state once it has ended."""
    deadline = time.monotonic() + within_s
    while (state := job(url, job_id))["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, state
        time.sleep(0.05)
    return state


def test_queued_calls_run_in_order_and_a_sync_call_waits_for_none(url, session):
    assert call(url, session, "seen = []").status_code == 200
    ids = [submit(url, session, f"import time\ntime.sleep({0.6 if n == 0 else 0})\n"
                                f"seen.append({n})\nlist(seen)") for n in range(3)]
    assert job(url, ids[2])["status"] == "queued"
    busy = call(url, session, "seen")  # a sync call while calls wait: at once, 409
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "session_busy"
    states = [ended(url, job_id) for job_id in ids]
    assert [state["result"] for state in states] == [[0], [0, 1], [0, 1, 2]]
    assert all(state["status"] == "finished" and state["session"]["id"] == session for state in states)
    assert states[2]["session"]["usage"]["calls"] == 4
    after = call(url, session, "def main():\n    seen.append(3)\n    return seen")
    assert after.status_code == 200 and after.json()["result"] == [0, 1, 2, 3]


def test_a_dataframe_built_by_a_queued_call_is_used_by_the_next(url, session):
    built = submit(url, session, "import pandas as pd\n"
                                 "frame = pd.DataFrame({'k': ['a', 'b', 'a'], 'v': [1, 2, 3]})")
    used = submit(url, session, "frame.groupby('k')['v'].sum().to_dict()")
    assert ended(url, built)["status"] == "finished"
    assert ended(url, used)["result"] == {"a": 4, "b": 2}


def test_cancel_a_queued_call_and_a_running_one_keeps_the_session(url, session):
    call(url, session, "x = 'kept'")
    running = submit(url, session, "import time\nwhile True:\n    time.sleep(0.05)")
    waiting = submit(url, session, "x = 'changed'")
    deadline = time.monotonic() + 10
    while job(url, running)["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    dropped = requests.delete(f"{url}/jobs/{waiting}", headers=ALICE, timeout=10)
    assert dropped.status_code == 200 and dropped.json()["status"] == "canceled"
    stopped = requests.delete(f"{url}/jobs/{running}", headers=ALICE, timeout=10)
    assert stopped.status_code == 200 and stopped.json()["status"] == "canceled", stopped.text
    assert stopped.json()["error"]["code"] == "canceled"
    assert call(url, session, "x").json()["result"] == "kept"  # the queued one never ran
    assert job(url, waiting)["status"] == "canceled"


def test_calls_still_queued_when_the_session_ends_fail_session_ended(url, session):
    running = submit(url, session, "import time\ntime.sleep(1)")
    queued = [submit(url, session, "1") for _ in range(2)]
    time.sleep(0.3)
    assert requests.delete(f"{url}/sessions/{session}", headers=ALICE, timeout=10).status_code == 200
    for job_id in [running, *queued]:
        state = ended(url, job_id, within_s=10)
        assert state["status"] == "failed"
        assert state["error"]["code"] == "session_ended" and state["error"]["reason"] == "deleted", state
    assert call(url, session, "1", queued=True).status_code == 410


def test_another_clients_session_and_job_are_404(url, session):
    foreign = call(url, session, "1", headers=BOB, queued=True)
    assert foreign.status_code == 404 and foreign.json()["error"]["code"] == "session_not_found"
    mine = submit(url, session, "1")
    assert job(url, mine, BOB)["error"]["code"] == "job_not_found"
    assert ended(url, mine)["result"] == 1


def test_the_clients_queue_cap_applies(url, session):
    ids = [submit(url, session, "import time\ntime.sleep(1.5)")]
    deadline = time.monotonic() + 10
    while job(url, ids[0])["status"] != "running":  # a running call no longer waits: not counted
        assert time.monotonic() < deadline
        time.sleep(0.05)
    ids += [submit(url, session, "1") for _ in range(PER_CLIENT)]
    over = call(url, session, "1", queued=True)
    assert over.status_code == 503 and over.json()["error"]["code"] == "busy", over.text
    assert "Retry-After" in over.headers
    for job_id in ids:
        ended(url, job_id)
    assert ended(url, submit(url, session, "2"))["result"] == 2
