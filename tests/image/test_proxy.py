"""nginx in front of gunicorn in the image (docker/nginx.conf, started by docker/supervise.py):
slow clients cost no gunicorn thread and are closed within nginx's bounds, nginx's own answers
are JSON in the service's error shape, and no client picks its own address with X-Forwarded-For.

The image runs as `make run` runs it (tests/image/test_docker.py's `running`), on loopback only.
"""
import http.client
import json
import re
import shlex
import socket
import time

import pytest
import requests

from bench.slowclients import BENIGN_REQUESTS, KINDS, measure
from shared.proxy import proxy_settings
from shared.settings import Settings
from tests.image.test_docker import container_logs, running
from tests.support.images import docker, make_var
from tests.support.servers import REPO

pytestmark = pytest.mark.docker

NGINX_CONF = (REPO / "docker" / "nginx.conf").read_text()


def nginx_seconds(directive: str) -> int:
    """A `directive Ns;` of docker/nginx.conf, in seconds."""
    found = re.search(rf"{directive} (\d+)s;", NGINX_CONF)
    assert found is not None, directive
    return int(found[1])


HEADER_TIMEOUT_S = nginx_seconds("client_header_timeout")
BODY_TIMEOUT_S = nginx_seconds("client_body_timeout")
UPSTREAM = re.search(r"upstream gunicorn \{.*?keepalive_timeout (\d+)s;", NGINX_CONF, re.S)
assert UPSTREAM is not None
UPSTREAM_IDLE_S = int(UPSTREAM[1])
"""How long nginx keeps an idle connection to gunicorn for reuse."""
CLOSE_MARGIN_S = 5.0
"""Beyond nginx's bound: its timers' granularity, and this side noticing on a loaded machine."""
SLOW_PER_KIND = 500
MAX_BODY_BYTES = proxy_settings(Settings())["MAX_BODY_BYTES"]
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


@pytest.fixture(scope="module")
def run_flags() -> list[str]:
    return shlex.split(make_var("DOCKER_RUN_FLAGS"))


@pytest.fixture(scope="module")
def service(image: str, run_flags: list[str]):  # noqa: F811
    """The image with no workers (nothing here needs the queue): (container id, base URL)."""
    with running(image, run_flags, "PYSANDBOX_WORKERS=0") as found:
        yield found


def raw(base: str, request: bytes) -> tuple[http.client.HTTPResponse, bytes]:
    """Send request bytes as they are; the parsed answer and its body."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        return answer, answer.read()


def test_slow_connections_delay_no_one_and_are_closed_within_the_bounds(service) -> None:
    """500 connections trickling headers, 500 trickling a body, 500 sending nothing, held open
    together (gunicorn has a few dozen threads): the benign client's requests all answer 200,
    and the server closes each slow connection within nginx's bound."""
    container, base = service
    figures = measure(base, SLOW_PER_KIND)
    print(f"\n{figures.report()}")
    assert [slow.error for slow in figures.slow if slow.error] == []
    assert figures.open_at_benign_start == len(KINDS) * SLOW_PER_KIND, figures.report()
    assert figures.benign_statuses == [200] * BENIGN_REQUESTS, \
        (figures.benign_statuses, container_logs(container))
    bounds = {"headers": HEADER_TIMEOUT_S, "nothing": HEADER_TIMEOUT_S, "body": BODY_TIMEOUT_S}
    for slow in figures.slow:
        assert slow.closed, f"a {slow.kind} connection was never closed by the server"
        assert slow.open_s <= bounds[slow.kind] + CLOSE_MARGIN_S, (slow, figures.report())


CASES = {
    "no request line": (b"GARBAGE\r\n\r\n", 400, "bad_request"),
    "no Host": (b"GET /health HTTP/1.1\r\n\r\n", 400, "bad_request"),
    "TRACE": (b"TRACE / HTTP/1.1\r\nHost: x\r\n\r\n", 405, "method_not_allowed"),
    "body over the cap": (b"POST /execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1), 413, "payload_too_large"),
    "long URI": (b"GET /%s HTTP/1.1\r\nHost: x\r\n\r\n" % (b"a" * 20000), 414, "uri_too_long"),
    "long header": (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n" % (b"a" * 9000), 431,
                    "headers_too_large"),
    "unknown transfer coding": (b"POST /execute HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
                                501, "not_implemented"),
    "HTTP/2.0 line": (b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n", 505, "http_version_not_supported"),
    "nginx's error page": (b"GET /.pysandbox-error HTTP/1.1\r\nHost: x\r\n\r\n", 404, "not_found"),
}


@pytest.mark.parametrize("case", CASES)
def test_nginx_answers_in_json_with_a_code_and_a_request_id(service, case: str) -> None:
    request, status, code = CASES[case]
    answer, body = raw(service[1], request)
    assert answer.status == status, body
    assert answer.getheader("Content-Type") == "application/json", answer.getheaders()
    assert REQUEST_ID.fullmatch(answer.getheader("X-Request-ID") or ""), answer.getheaders()
    error = json.loads(body)["error"]
    assert error["code"] == code and error["message"], error
    if code == "payload_too_large":
        assert str(MAX_BODY_BYTES) in error["message"], error


def test_nginx_keeps_the_clients_request_id_and_logs_what_it_answered(service) -> None:
    container, base = service
    answer, _ = raw(base, b"POST /execute HTTP/1.1\r\nHost: x\r\nX-Request-ID: mine-1\r\n"
                          b"Content-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1))
    assert answer.status == 413 and answer.getheader("X-Request-ID") == "mine-1"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in docker("logs", container).stdout.splitlines()
                 if '"logger":"nginx"' in line]
        if any(line["request_id"] == "mine-1" for line in lines):
            break
        time.sleep(0.2)
    (line,) = [line for line in lines if line["request_id"] == "mine-1"]
    assert line["code"] == "payload_too_large" and line["httpRequest"]["status"] == 413, line
    assert line["severity"] == "WARNING" and line["httpRequest"]["remoteIp"], line


def test_gunicorn_answers_once_and_is_logged_once(service) -> None:
    """A request gunicorn answered is in gunicorn's access log only, not nginx's too."""
    container, base = service
    answer = requests.get(f"{base}/health", headers={"X-Request-ID": "once-1"}, timeout=10)
    assert answer.status_code == 200 and answer.headers["X-Request-ID"] == "once-1"
    time.sleep(1)
    lines = [line for line in docker("logs", container).stdout.splitlines() if "once-1" in line]
    assert len(lines) == 1 and json.loads(lines[0])["logger"] == "gunicorn.access", lines


def test_the_app_still_names_its_own_caps(service) -> None:
    """A body under nginx's cap reaches the app, which refuses a script over its own cap itself."""
    script = "#" * (Settings().max_script_bytes + 1)
    answer = requests.post(f"{service[1]}/execute", json={"script": script}, timeout=30)
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"] == {"code": "payload_too_large", "message":
                                      f"the script is larger than {Settings().max_script_bytes} bytes"}


def test_answers_larger_than_nginx_buffers_pass_whole(service) -> None:
    """A body and an answer of a few MiB go through nginx's temporary files (its workers write
    them in its run directory)."""
    script = "def main(input):\n    print('o' * 1_000_000)\n    return input + 'r' * 400_000\n"
    answer = requests.post(f"{service[1]}/execute", json={"script": script, "input": "i" * 400_000},
                           timeout=60)
    assert answer.status_code == 200, answer.text[:2000]
    body = answer.json()
    assert body["result"] == "i" * 400_000 + "r" * 400_000 and len(body["stdout"]) == 1_000_001


def test_nginx_drops_idle_upstream_connections_before_gunicorn_does() -> None:
    """Otherwise a request could be sent on a connection gunicorn is closing: a 502 for a POST,
    which nginx does not retry."""
    conf = (REPO / "api" / "gunicorn.conf.py").read_text()
    found = re.search(r"^keepalive = (\d+)$", conf, re.M)
    assert found is not None and int(found[1]) > UPSTREAM_IDLE_S


def test_gunicorn_unreachable_is_a_json_502(image: str, run_flags: list[str]) -> None:  # noqa: F811
    with running(image, run_flags, "PYSANDBOX_WORKERS=0") as (container, base):
        docker("exec", container, "rm", "/run/pysandbox-http/gunicorn.sock")
        time.sleep(UPSTREAM_IDLE_S + 1)  # the idle connections nginx kept to gunicorn are closed
        answer = requests.get(f"{base}/health", timeout=30)
        assert answer.status_code == 502, answer.text
        assert answer.json()["error"]["code"] == "upstream_unavailable", answer.text
        assert answer.headers["Retry-After"] == "1" and answer.headers["X-Request-ID"]


# Run inside the container: SIGSTOP (or SIGCONT) gunicorn's worker, the gunicorn whose parent
# is not the supervisor. No procps there.
SIGNAL_GUNICORN_WORKER = """
import os, signal, sys
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        argv = open(f"/proc/{pid}/cmdline", "rb").read()
        ppid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    except OSError:
        continue
    if b"gunicorn" in argv and ppid != 1 and int(pid) != os.getpid():  # this script names it too
        os.kill(int(pid), signal.Signals[sys.argv[1]])
        print(pid)
"""


def test_gunicorn_not_answering_in_time_is_a_json_504(image: str, run_flags: list[str]) -> None:  # noqa: F811
    """nginx waits for gunicorn as long as the longest sync run may take (+ a margin), then 504."""
    env = ("PYSANDBOX_WORKERS=0", "PYSANDBOX_MAX_TIMEOUT_S=1", "PYSANDBOX_DEFAULT_TIMEOUT_S=1",
           "PYSANDBOX_QUEUE_WAIT_S=0")
    waits_s = proxy_settings(Settings(max_timeout_s=1, queue_wait_s=0))["UPSTREAM_TIMEOUT_S"]
    with running(image, run_flags, *env) as (container, base):
        stopped = docker("exec", container, "/usr/bin/python3", "-c", SIGNAL_GUNICORN_WORKER, "SIGSTOP")
        assert stopped.stdout.strip().isdigit(), stopped.stdout
        started = time.monotonic()
        answer = requests.get(f"{base}/health", timeout=waits_s + 30)
        took = time.monotonic() - started
        docker("exec", container, "/usr/bin/python3", "-c", SIGNAL_GUNICORN_WORKER, "SIGCONT")
        assert answer.status_code == 504, answer.text
        assert answer.json()["error"]["code"] == "upstream_timeout", answer.text
        assert waits_s - 1 <= took <= waits_s + 10, took


@pytest.mark.parametrize("trusted", [0, 1])
def test_x_forwarded_for_never_chooses_the_clients_address(image: str, run_flags: list[str],  # noqa: F811
                                                         trusted: int) -> None:
    """The rate limit counts by address: with no trusted proxy a client's own X-Forwarded-For
    changes nothing; with one, only the entry that proxy added (the last) counts."""
    env = ("PYSANDBOX_WORKERS=0", "PYSANDBOX_RATE_LIMIT=2/minute", f"PYSANDBOX_TRUSTED_PROXIES={trusted}")
    with running(image, run_flags, *env) as (_, base):
        def status(forwarded_for: str) -> int:
            return requests.post(f"{base}/execute", json={"script": "def main(): return 1"},
                                 headers={"X-Forwarded-For": forwarded_for}, timeout=30).status_code

        if trusted == 0:
            assert [status(f"10.0.0.{n}") for n in range(3)] == [200, 200, 429]
        else:
            assert [status(f"{spoofed}, 10.0.0.1") for spoofed in ("6.6.6.6", "7.7.7.7", "8.8.8.8")] == \
                [200, 200, 429]
            assert status("6.6.6.6, 10.0.0.2") == 200, "another client, as its proxy says"
