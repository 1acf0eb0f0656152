"""Sessions over HTTP, against real gunicorn and the real jail: state kept between calls, isolation
between clients and sessions, the ways a session ends (410 with its reason), caps, /health and
/metrics, and a graceful stop."""
import concurrent.futures
import hashlib
import subprocess
import time
from collections.abc import Iterator

import pytest
import requests

from api import create_app
from tests.support.servers import gunicorn

KEYS = {"alice": "alice-key-0123456789abcdef", "bob": "bob-key-0123456789abcdef",
        "ops": "ops-key-0123456789abcdef"}
ALICE = {"Authorization": f"Bearer {KEYS['alice']}"}
BOB = {"Authorization": f"Bearer {KEYS['bob']}"}


def key_entries() -> str:
    roles = {"ops": ":operator"}
    return ",".join(f"{name}:{hashlib.sha256(key.encode()).hexdigest()}{roles.get(name, '')}"
                    for name, key in KEYS.items())


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    env = {"REDIS_URL": "", "PYSANDBOX_API_KEYS": key_entries(), "PYSANDBOX_MAX_SESSIONS": "5",
           "PYSANDBOX_MAX_SESSIONS_PER_CLIENT": "3", "PYSANDBOX_MAX_TIMEOUT_S": "5",
           "PYSANDBOX_WARM_JAILS": "1", "PYSANDBOX_MAX_MEMORY_MB": "512", "PYSANDBOX_SPARE_SESSION": "false"}
    with gunicorn(env) as served:
        yield served


def create(url: str, headers: dict[str, str] = ALICE, **body) -> requests.Response:
    return requests.post(f"{url}/sessions", json=body, headers=headers, timeout=30)


def call(url: str, session_id: str, script: str, headers: dict[str, str] = ALICE,
         **options) -> requests.Response:
    return requests.post(f"{url}/sessions/{session_id}/execute", json={"script": script, **options},
                         headers=headers, timeout=30)


@pytest.fixture
def session(url) -> Iterator[str]:
    made = create(url, memory_mb=192)
    assert made.status_code == 201, made.text
    yield made.json()["id"]
    requests.delete(f"{url}/sessions/{made.json()['id']}", headers=ALICE, timeout=30)


def test_a_dataframe_an_import_and_a_file_from_one_call_are_there_in_the_next(url, session):
    first = call(url, session, "import pandas as pd\nframe = pd.DataFrame({'a': [1, 2, 3]})\n"
                               "open('kept.txt', 'w').write('still here')\nprint('built')")
    assert first.status_code == 200 and first.json()["stdout"] == "built\n", first.text
    second = call(url, session, "def main():\n    return [int(frame.a.sum()), pd.__name__, "
                                "open('kept.txt').read()]")
    assert second.json()["result"] == [6, "pandas", "still here"]
    assert second.json()["session"]["usage"]["calls"] == 2 and second.json()["session"]["state"] == "open"


def test_created_with_its_limits_location_and_expiry(url):
    made = create(url, memory_mb=100_000, idle_timeout_s=5, max_lifetime_s=10**9)
    body = made.json()
    try:
        assert made.status_code == 201 and made.headers["Location"] == f"/sessions/{body['id']}"
        assert body["memory_mb"] == 512 and body["idle_timeout_s"] == 5 and body["max_lifetime_s"] == 6 * 3600
        assert body["expires_at"] == pytest.approx(time.time() + 5, abs=2)
        again = requests.get(f"{url}/sessions/{body['id']}", headers=ALICE, timeout=10)
        assert again.json()["id"] == body["id"]
    finally:
        requests.delete(f"{url}/sessions/{body['id']}", headers=ALICE, timeout=10)


def test_another_clients_session_is_404_and_sessions_never_share(url, session):
    assert call(url, session, "secret = 'alice'").status_code == 200
    for method in ("get", "delete"):
        foreign = requests.request(method, f"{url}/sessions/{session}", headers=BOB, timeout=10)
        assert foreign.status_code == 404 and foreign.json()["error"]["code"] == "session_not_found"
    assert call(url, session, "1", headers=BOB).status_code == 404
    other = create(url).json()["id"]
    try:
        seen = call(url, other, "'secret' in globals()")
        assert seen.json()["result"] is False
    finally:
        requests.delete(f"{url}/sessions/{other}", headers=ALICE, timeout=10)
    assert requests.get(f"{url}/sessions/nope", headers=ALICE, timeout=10).status_code == 404


def test_a_timeout_keeps_the_state_and_ignoring_the_interrupt_ends_the_session(url, session):
    call(url, session, "x = 'kept'")
    slow = call(url, session, "import time\nwhile True:\n    time.sleep(0.01)", timeout=0.5)
    assert slow.status_code == 422 and slow.json()["error"]["code"] == "timeout"
    assert slow.json()["session"]["state"] == "open"
    assert call(url, session, "x").json()["result"] == "kept"
    stubborn = call(url, session, "while True:\n    try:\n        while True:\n            pass\n"
                                  "    except KeyboardInterrupt:\n        pass", timeout=0.5)
    assert stubborn.status_code == 422 and stubborn.json()["session"]["reason"] == "timeout"
    after = call(url, session, "x")
    assert after.status_code == 410
    assert after.json()["error"] == {**after.json()["error"], "code": "session_ended", "reason": "timeout"}


def test_memory_past_the_limit_ends_it_and_the_service_is_fine(url, session):
    call(url, session, "x = 1")
    hog = call(url, session, "held = bytearray(400 * 1024 * 1024)")
    assert hog.status_code == 422 and hog.json()["error"]["code"] == "memory_limit"
    ended = call(url, session, "x")
    assert ended.status_code == 410 and ended.json()["error"]["reason"] == "memory_limit"
    gone = requests.get(f"{url}/sessions/{session}", headers=ALICE, timeout=10)
    assert gone.status_code == 410 and gone.json()["error"]["reason"] == "memory_limit"
    assert (gone.json()["session"]["state"], gone.json()["session"]["reason"]) == ("ended", "memory_limit")
    fine = requests.post(f"{url}/execute", json={"script": "def main(): return 1"}, headers=ALICE, timeout=30)
    assert fine.json()["result"] == 1


def jails() -> set[int]:
    """The pids of session jails on this machine (nsjail and its interpreter)."""
    found = subprocess.run(["pgrep", "-f", "serve_session"], capture_output=True, text=True).stdout
    return {int(pid) for pid in found.split()}


def test_delete_kills_the_jail_and_then_410(url):
    before = jails()
    made = create(url).json()
    mine = jails() - before
    assert mine, "the session's jail runs"
    gone = requests.delete(f"{url}/sessions/{made['id']}", headers=ALICE, timeout=10)
    assert gone.status_code == 200 and (gone.json()["state"], gone.json()["reason"]) == ("ended", "deleted")
    assert not mine & jails(), "no process of the session is left"
    assert call(url, made["id"], "1").status_code == 410
    assert requests.delete(f"{url}/sessions/{made['id']}", headers=ALICE, timeout=10).status_code == 410


def test_a_second_call_while_one_runs_is_409_session_busy(url, session):
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        slow = pool.submit(call, url, session, "import time\ntime.sleep(1.5)\n'slow'")
        time.sleep(0.5)
        busy = call(url, session, "1")
        assert busy.status_code == 409 and busy.json()["error"]["code"] == "session_busy"
        assert slow.result().json()["result"] == "slow"


def test_caps_per_client_then_in_all(url):
    made: list[tuple[str, dict[str, str]]] = []
    try:
        for _ in range(3):
            made.append((create(url).json()["id"], ALICE))
        over = create(url)
        assert over.status_code == 429 and over.json()["error"]["code"] == "too_many_sessions"
        assert "Retry-After" in over.headers
        for _ in range(2):
            made.append((create(url, BOB).json()["id"], BOB))
        full = create(url, BOB)
        assert full.status_code == 503 and full.json()["error"]["code"] == "sessions_full"
        health = requests.get(f"{url}/health", timeout=10).json()["sessions"]
        assert health == {"open": 5, "max": 5, "max_per_client": 3, "spare": 0}
    finally:
        for session_id, headers in made:
            requests.delete(f"{url}/sessions/{session_id}", headers=headers, timeout=10)


def test_idle_and_lifetime_expiry(url):
    idle = create(url, idle_timeout_s=1).json()["id"]
    short = create(url, max_lifetime_s=2).json()["id"]
    time.sleep(1.0)
    assert call(url, short, "1").status_code == 200  # in use: not idle, but its lifetime runs on
    time.sleep(2.5)
    assert call(url, idle, "1").json()["error"]["reason"] == "idle"
    assert call(url, short, "1").json()["error"]["reason"] == "lifetime"


def test_metrics_count_sessions_calls_and_ends(url, session):
    call(url, session, "1")
    text = requests.get(f"{url}/metrics", headers={"Authorization": f"Bearer {KEYS['ops']}"}, timeout=10).text
    for name in ("pysandbox_sessions_open", "pysandbox_sessions_created_total",
                 'pysandbox_sessions_ended_total{reason="deleted"}',
                 'pysandbox_session_calls_total{outcome="ok"}',
                 "pysandbox_session_call_duration_seconds_bucket"):
        assert name in text, name


def test_a_spare_session_is_taken_then_made_again_and_a_graceful_stop_ends_them_all(tmp_path):
    """With the spare on (the default), the first session with the default limits is the one
    started ahead; a graceful stop ends every session, the spare too, and leaves no jail."""
    log = tmp_path / "gunicorn.log"
    before = jails()
    with gunicorn({"REDIS_URL": "", "PYSANDBOX_WARM_JAILS": "0"}, log_path=log) as served:
        spare = wait_for_spare(served)
        made = [create(served, {}).json()["id"] for _ in range(2)]
        assert [call(served, made_id, "x = 1\nx", {}).json()["result"] for made_id in made] == [1, 1]
        assert spare & jails(), "the spare became a session: its jail runs on"
        wait_for_spare(served)
        mine = jails() - before
    assert log.read_text().count("session ended: shutdown") == 2
    assert not mine & jails()


def wait_for_spare(url: str) -> set[int]:
    """Until /health says a spare session is ready; the session jails running then."""
    deadline = time.monotonic() + 30
    while requests.get(f"{url}/health", timeout=10).json()["sessions"]["spare"] != 1:
        assert time.monotonic() < deadline, "no spare session came up"
        time.sleep(0.1)
    return jails()


def test_an_api_that_only_enqueues_without_redis_answers_503_queue_unavailable():
    """Queue mode's sessions (tests/service/test_queue_sessions.py) are routed through Redis."""
    client = create_app({"REDIS_URL": "redis://127.0.0.1:1/0", "EXECUTE_VIA_QUEUE": True}).test_client()
    for answer in (client.post("/sessions", json={}), client.get("/sessions/some-id")):
        assert answer.status_code == 503 and (answer.json or {})["error"]["code"] == "queue_unavailable"
    assert "open" not in (client.get("/health").json or {})["sessions"]


def test_a_queued_call_without_a_queue_is_503_queue_unavailable(url, session):
    """gunicorn alone, no Redis: `?async=1` on a session answers as POST /execute?async=1 does."""
    queued = requests.post(f"{url}/sessions/{session}/execute?async=1", json={"script": "1"}, headers=ALICE,
                           timeout=10)
    plain = requests.post(f"{url}/execute?async=1", json={"script": "def main(): return 1"}, headers=ALICE,
                          timeout=10)
    assert queued.status_code == plain.status_code == 503
    assert queued.json()["error"] == plain.json()["error"] == {
        "code": "queue_unavailable", "message": "async runs need a queue: set REDIS_URL"}
