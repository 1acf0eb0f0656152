"""Signed callbacks of queued runs (shared/callbacks.py, docs/callbacks.md) with real redis-server,
an RQ worker (whose delivery loop sends them) and gunicorn, to a receiver on loopback that the
test's settings allow: each ended job is called back once with GET /jobs/<id>'s JSON, signed as the
documentation says, a job whose worker was SIGKILLed included; a receiver that fails twice gets it
on the third try with the same delivery id; a redirect is never followed; a URL the settings do not
allow is refused at submit."""
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest
import requests
from pysandbox_client import verify_signature
from redis import Redis
from rq.registry import StartedJobRegistry

from shared.callbacks import SWEEP_S, Deliverer, Destinations
from shared.queue import ALIVE_TTL_S, QUEUE_NAME
from shared.settings import load
from tests.service.test_queue import kill_tree
from tests.support.servers import free_port, gunicorn, redis_server, workers

SECRET = "callback-test-secret"
SETTINGS = {"PYSANDBOX_CALLBACK_HOSTS": "127.0.0.1/32", "PYSANDBOX_CALLBACK_SECRET": SECRET,
            "PYSANDBOX_CALLBACK_BACKOFF_S": "0.3", "PYSANDBOX_CALLBACK_RETRY_S": "30",
            "PYSANDBOX_CALLBACK_TIMEOUT_S": "2", "PYSANDBOX_WARM_JAILS": "1"}
SLEEPER = "import time\ndef main():\n    time.sleep(3)\n    return 'slept'"


@dataclass
class Receiver:
    """A loopback HTTP server that records every POST; /fail<n>/... answers 500 n times first,
    /redirect/... answers 302 to /target."""

    url: str
    received: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)

    def posts(self, path: str) -> list[tuple[dict[str, str], bytes]]:
        return [(headers, body) for got, headers, body in self.received if got == path]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    port = free_port()
    made = Receiver(f"http://127.0.0.1:{port}")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            made.received.append((self.path, dict(self.headers.items()), body))
            if self.path.startswith("/redirect"):
                self.send_response(302)
                self.send_header("Location", f"{made.url}/target")
            elif self.path.startswith("/fail") and made.failures.get(self.path, 0) < int(self.path[5]):
                made.failures[self.path] = made.failures.get(self.path, 0) + 1
                self.send_response(500)
            else:
                self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield made
    server.shutdown()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """gunicorn, Redis and one worker, with callbacks allowed to 127.0.0.1 only."""
    with redis_server(tmp_path_factory.mktemp("redis")) as redis_url, \
            workers(redis_url, 1, env=SETTINGS), gunicorn({**SETTINGS, "REDIS_URL": redis_url}) as url:
        yield url


def submit(service: str, script: str, callback_url: str, **options: Any) -> str:
    answer = requests.post(f"{service}/execute?async=1",
                           json={"script": script, "callback_url": callback_url, **options}, timeout=10)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def settled(service: str, job_id: str, timeout_s: float = 30) -> dict[str, Any]:
    """GET /jobs/<id> once the job has ended and its callback is no longer pending."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = requests.get(f"{service}/jobs/{job_id}", timeout=10).json()
        if state["status"] not in ("queued", "running") and state["callback"]["status"] != "pending":
            return dict(state)
        assert time.monotonic() < deadline, state
        time.sleep(0.1)


def running(service: str, job_id: str, timeout_s: float = 30) -> dict[str, Any]:
    """GET /jobs/<id> once the job runs."""
    deadline = time.monotonic() + timeout_s
    while (state := requests.get(f"{service}/jobs/{job_id}", timeout=10).json())["status"] != "running":
        assert time.monotonic() < deadline, state
        time.sleep(0.05)
    return dict(state)


def documented_check(secret: str, body: bytes, header: str) -> bool:
    """docs/callbacks.md's recipe, as a receiver without our client writes it."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    expected = hmac.new(secret.encode(), fields["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"]) and abs(time.time() - int(fields["t"])) < 300


@pytest.mark.parametrize(("script", "status"), [
    ("def main():\n    print('hi')\n    return {'n': 42}", "finished"),
    ("def main():\n    return 1 / 0", "failed"),
])
def test_each_ended_job_is_called_back_once_signed(service: str, receiver: Receiver, script: str,
                                                   status: str) -> None:
    path = f"/ok/{status}"
    job_id = submit(service, script, receiver.url + path)
    state = settled(service, job_id)
    assert state["status"] == status
    assert state["callback"] == {"url": receiver.url + path, "delivery_id": state["callback"]["delivery_id"],
                                 "status": "delivered", "attempts": 1, "last_error": None}
    time.sleep(1)  # nothing comes twice
    [(headers, body)] = receiver.posts(path)
    assert json.loads(body) == {name: value for name, value in state.items() if name != "callback"}
    assert headers["Content-Type"] == "application/json"
    assert headers["PySandbox-Delivery"] == state["callback"]["delivery_id"]
    assert documented_check(SECRET, body, headers["PySandbox-Signature"])
    assert verify_signature(SECRET, body, headers["PySandbox-Signature"])
    assert not verify_signature("another secret", body, headers["PySandbox-Signature"])
    assert not verify_signature(SECRET, body + b" ", headers["PySandbox-Signature"])


def test_a_job_canceled_before_it_ran_is_called_back(service: str, receiver: Receiver) -> None:
    """The one worker is busy with a sleeper; the job behind it is canceled by the API, which
    makes its callback due; the worker's delivery loop sends it."""
    submit(service, SLEEPER, receiver.url + "/ok/sleeper")
    job_id = submit(service, "def main():\n    return 1", receiver.url + "/ok/canceled")
    canceled = requests.delete(f"{service}/jobs/{job_id}", timeout=10).json()
    assert canceled["status"] == "canceled"
    state = settled(service, job_id)
    assert state["callback"]["status"] == "delivered"
    [(_, body)] = receiver.posts("/ok/canceled")
    assert json.loads(body)["status"] == "canceled" and json.loads(body)["error"]["code"] == "canceled"


def test_a_sessions_queued_calls_are_called_back_with_the_session(service: str, receiver: Receiver) -> None:
    """A session's queued call (run by the API process holding the session) is called back as a
    job is, its body GET /jobs/<id>'s with `session`; so is one its session's end failed."""
    session = requests.post(f"{service}/sessions", json={}, timeout=30).json()["id"]

    def queue(script: str, path: str) -> str:
        answer = requests.post(f"{service}/sessions/{session}/execute?async=1",
                               json={"script": script, "callback_url": receiver.url + path}, timeout=10)
        assert answer.status_code == 202, answer.text
        return str(answer.json()["id"])

    def called_back(job_id: str, path: str) -> dict[str, Any]:
        state = settled(service, job_id)
        assert state["callback"]["status"] == "delivered" and state["session"]["id"] == session
        [(headers, body)] = receiver.posts(path)
        assert json.loads(body) == {name: value for name, value in state.items() if name != "callback"}
        assert verify_signature(SECRET, body, headers["PySandbox-Signature"])
        return state

    assert called_back(queue("6 * 7", "/ok/session-call"), "/ok/session-call")["result"] == 42
    queue("import time\ntime.sleep(1)", "/ok/session-slow")
    behind = queue("1", "/ok/session-ended")
    assert requests.delete(f"{service}/sessions/{session}", timeout=10).status_code == 200
    assert called_back(behind, "/ok/session-ended")["error"] == {
        "code": "session_ended", "message": "the session ended: deleted", "reason": "deleted"}


@pytest.mark.parametrize("how", ["liveness", "abandoned"])
def test_a_job_lost_with_its_worker_is_called_back(tmp_path: Path, receiver: Receiver, how: str) -> None:
    """The worker running a job is SIGKILLed (with its jails, as a container kill does); the other
    worker's delivery loop finds the job lost by GET /jobs/<id>'s rule: its liveness key gone
    (`liveness`), or RQ's own cleanup of the started jobs failed it as abandoned (`abandoned`, run
    here at once rather than after the job's RQ timeout). It is called back once, signed, with
    GET /jobs/<id>'s body: failed, worker_lost, naming the dead worker."""
    path = f"/ok/lost-{how}"
    with redis_server(tmp_path) as redis_url, workers(redis_url, 2, env=SETTINGS) as procs, \
            gunicorn({**SETTINGS, "REDIS_URL": redis_url}) as service:
        job_id = submit(service, "import time\ndef main():\n    time.sleep(25)", receiver.url + path,
                        timeout=30)
        run = running(service, job_id)
        [victim] = [proc for proc in procs if f".{proc.pid}." in run["worker"]]
        kill_tree(victim.pid)
        if how == "abandoned":  # as a worker's maintenance does once the job's RQ timeout has passed
            StartedJobRegistry(QUEUE_NAME, connection=Redis.from_url(redis_url)).cleanup(time.time() + 10**6)
        deadline = time.monotonic() + (ALIVE_TTL_S + 2 * SWEEP_S + 5) * 2  # lost, a sweep, sent; x2
        while not receiver.posts(path):
            assert time.monotonic() < deadline, requests.get(f"{service}/jobs/{job_id}", timeout=10).json()
            time.sleep(0.2)
        state = settled(service, job_id)
        time.sleep(SWEEP_S + 1)  # the sweeps after it send nothing more
        [(headers, body)] = receiver.posts(path)
    assert state["status"] == "failed" and state["error"]["code"] == "worker_lost"
    assert state["worker"] == run["worker"]
    assert json.loads(body) == {name: value for name, value in state.items() if name != "callback"}
    assert state["callback"] == {"url": receiver.url + path, "delivery_id": headers["PySandbox-Delivery"],
                                 "status": "delivered", "attempts": 1, "last_error": None}
    assert documented_check(SECRET, body, headers["PySandbox-Signature"])
    assert verify_signature(SECRET, body, headers["PySandbox-Signature"])


def test_a_job_that_ends_while_redis_is_away_is_called_back(tmp_path: Path, receiver: Receiver) -> None:
    """Redis (append-only, as compose runs it) stops while a worker runs a job with a callback and
    comes back after the run ended: the worker makes the callback due once Redis answers, as it
    stores the outcome then, and it is sent once, finished."""
    path, port = "/ok/redis-away", free_port()
    durable = ("--appendonly", "yes", "--appendfsync", "always")
    with ExitStack() as first_redis:
        redis_url = first_redis.enter_context(redis_server(tmp_path, port, *durable))
        with workers(redis_url, 1, env=SETTINGS), gunicorn({**SETTINGS, "REDIS_URL": redis_url}) as service:
            job_id = submit(service, "import time\ndef main():\n    time.sleep(2)\n    return 7",
                            receiver.url + path, timeout=10)
            running(service, job_id)
            first_redis.close()  # Redis stops mid-run
            time.sleep(3)  # the run ends while it is away
            with redis_server(tmp_path, port, *durable):
                state = settled(service, job_id)
                time.sleep(1)  # nothing comes twice
                [(headers, body)] = receiver.posts(path)
    assert (state["status"], state["result"]) == ("finished", 7), state
    assert state["callback"]["status"] == "delivered", state
    assert json.loads(body) == {name: value for name, value in state.items() if name != "callback"}
    assert verify_signature(SECRET, body, headers["PySandbox-Signature"])


def test_a_receiver_that_fails_twice_gets_it_the_third_time(service: str, receiver: Receiver) -> None:
    job_id = submit(service, "def main():\n    return 'third'", receiver.url + "/fail2/x")
    state = settled(service, job_id)
    assert state["callback"]["status"] == "delivered" and state["callback"]["attempts"] == 3
    posts = receiver.posts("/fail2/x")
    assert len(posts) == 3
    assert {headers["PySandbox-Delivery"] for headers, _ in posts} == {state["callback"]["delivery_id"]}
    assert all(verify_signature(SECRET, body, headers["PySandbox-Signature"]) for headers, body in posts)


def test_a_redirect_is_not_followed(service: str, receiver: Receiver) -> None:
    job_id = submit(service, "def main():\n    return 1", receiver.url + "/redirect/y")
    state = settled(service, job_id)
    assert state["callback"]["status"] == "failed" and state["callback"]["attempts"] == 1
    assert "redirect" in state["callback"]["last_error"]
    assert len(receiver.posts("/redirect/y")) == 1 and receiver.posts("/target") == []


@pytest.mark.parametrize(("url", "why"), [
    ("http://10.1.2.3/hook", "not allowed"),
    ("http://169.254.169.254/latest/meta-data", "not allowed"),
    ("http://localhost:1/hook", "not allowed"),
    ("http://example.com/hook", "not allowed"),
    ("ftp://127.0.0.1/hook", "http or https"),
])
def test_a_url_the_settings_do_not_allow_is_refused(service: str, url: str, why: str) -> None:
    answer = requests.post(f"{service}/execute?async=1", json={"script": "def main():\n    return 1",
                                                               "callback_url": url}, timeout=10)
    error = answer.json()["error"]
    assert answer.status_code == 400 and error["code"] == "callback_not_allowed" and why in error["message"]


def test_a_sync_run_or_a_service_without_callbacks_refuses_them(service: str, service_url: str,
                                                                receiver: Receiver) -> None:
    body = {"script": "def main():\n    return 1", "callback_url": receiver.url + "/ok/sync"}
    sync = requests.post(f"{service}/execute", json=body, timeout=10)
    assert sync.status_code == 400 and sync.json()["error"]["code"] == "callback_not_allowed"
    off = requests.post(f"{service_url}/execute?async=1", json=body, timeout=10)
    assert off.status_code == 400 and "off" in off.json()["error"]["message"]
    assert receiver.posts("/ok/sync") == []


def test_a_delivery_checks_the_address_again_and_connects_to_it(receiver: Receiver) -> None:
    """At delivery the name is resolved and checked again (it may point elsewhere since the
    submit): refused now, nothing is sent; allowed, the connection goes to the checked address
    with the URL's host as Host."""
    port = receiver.url.rsplit(":", 1)[1]
    url = f"http://localhost:{port}/ok/pinned"
    never = Redis.from_url("redis://127.0.0.1:1/0")  # post() keeps no state
    strict = Deliverer(never, load({}, SETTINGS), Destinations(frozenset({"localhost"}), ()))
    error, final = strict.post(url, "delivery-1", b"{}")
    assert final and error is not None and "resolves to 127.0.0.1" in error
    assert receiver.posts("/ok/pinned") == []
    allowed = Destinations(frozenset({"localhost"}), (ip_network("127.0.0.0/8"), ip_network("::1/128")))
    error, _ = Deliverer(never, load({}, SETTINGS), allowed).post(url, "delivery-2", b"{}")
    assert error is None
    [(headers, body)] = receiver.posts("/ok/pinned")
    assert headers["Host"] == f"localhost:{port}" and headers["PySandbox-Delivery"] == "delivery-2"
