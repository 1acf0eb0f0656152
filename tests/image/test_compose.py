"""docker-compose.yml with real containers: redis, an unprivileged api that only enqueues,
and two jail workers.

One compose project per test module, with a unique project name, image tags, password and
a free loopback port, so that it never meets a developer's own `docker-compose up`; it is
always taken down (`down -v --rmi all`: the unique tags only, the layers stay cached).
"""
import collections
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.image.test_docker import poll_job, submit_async
from tests.image.test_proxy import raw
from tests.support.images import BUILD_TIMEOUT_S, docker, free_port, make_var
from tests.support.servers import REPO

pytestmark = pytest.mark.docker

COMPOSE_FILE = REPO / "docker-compose.yml"
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
WORKERS = 2
JOBS = 20
BURST = 50
HEALTH_TIMEOUT_S = 90
STALLED = 64
"""Stalled connections to the api: more than its gunicorn has threads (3 x 4 slots + 4 on 2 cores)."""


class Compose:
    """docker-compose for one project."""

    def __init__(self) -> None:
        if shutil.which("docker-compose") is None:
            pytest.fail("docker-compose (v1) is not installed: apt-get install docker-compose")
        self.project = f"pysandboxtest{os.getpid()}{secrets.token_hex(3)}"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        # The same proxy CA certificates as `make image` passes (Makefile: EXTRA_CA_FILES),
        # byte for byte ($(cat ...) drops trailing newlines), so the build cache is shared.
        certs = "".join(path.read_text() for path in sorted(HOST_CA_DIR.glob("*.crt")))
        self.env = {
            **os.environ,
            "PYSANDBOX_PORT": f"127.0.0.1:{self.port}",
            "PYSANDBOX_IMAGE": f"pysandbox-compose-test:{self.project}",
            "PYSANDBOX_WORKER_IMAGE": f"pysandbox-worker-compose-test:{self.project}",
            "PYSANDBOX_REDIS_PASSWORD": secrets.token_hex(24),
            "PYSANDBOX_EXTRA_CA_CERTS": certs.rstrip("\n"),
        }

    def __call__(self, *args: str, timeout: float = 180, check: bool = True
                 ) -> subprocess.CompletedProcess:
        argv = ["docker-compose", "--ansi", "never", "-p", self.project, "-f", str(COMPOSE_FILE), *args]
        try:
            done = subprocess.run(argv, cwd=REPO, env=self.env, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"{shlex.join(argv)} did not finish in {timeout} s:\n{exc.stdout!r}\n{exc.stderr!r}")
        if check and done.returncode != 0:
            pytest.fail(f"{shlex.join(argv)} failed ({done.returncode}):\n"
                        f"{done.stdout[-6000:]}\n{done.stderr[-6000:]}\n{self.logs()}")
        return done

    def logs(self) -> str:
        done = self("logs", "--no-color", "--tail", "150", check=False, timeout=60)
        return f"--- docker-compose logs ---\n{done.stdout[-12000:]}{done.stderr[-3000:]}"

    def containers(self, service: str) -> list[str]:
        return self("ps", "-q", service).stdout.split()


@pytest.fixture(scope="module")
def compose() -> Iterator[Compose]:
    """The project, up with WORKERS workers and healthy; always taken down."""
    project = Compose()
    started = time.monotonic()
    try:
        project("up", "-d", "--build", "--scale", f"worker={WORKERS}", timeout=BUILD_TIMEOUT_S)
        wait_health(project, WORKERS)
        print(f"\ncompose: up and healthy with {WORKERS} workers in "
              f"{time.monotonic() - started:.1f} s")
        yield project
    finally:
        project("down", "-v", "--rmi", "all", "--remove-orphans", check=False, timeout=180)


def wait_health(project: Compose, workers: int) -> dict:
    deadline, last = time.monotonic() + HEALTH_TIMEOUT_S, "no answer yet"
    while time.monotonic() < deadline:
        try:
            answer = requests.get(f"{project.base}/health", timeout=5)
            body = answer.json()
            if answer.status_code == 200 and body["queue"]["workers"] == workers:
                return body
            last = f"HTTP {answer.status_code}: {answer.text[:500]}"
        except (requests.RequestException, ValueError, KeyError) as exc:
            last = repr(exc)
        time.sleep(0.5)
    pytest.fail(f"/health never reported {workers} workers ({last})\n{project.logs()}")


def inspect(container: str) -> dict:
    return json.loads(docker("inspect", container).stdout)[0]


def test_health_reports_redis_and_the_workers(compose: Compose) -> None:
    body = wait_health(compose, WORKERS)
    assert body["status"] == "ok" and body["queue"]["redis"] == "ok", body
    assert "selftest" not in body, "an API that only enqueues never runs the jail"


def test_async_jobs_all_finish(compose: Compose) -> None:
    jobs = {submit_async(compose.base, f"def main():\n    print({n})\n    return {n} * {n}\n"): n
            for n in range(JOBS)}
    for job_id, n in jobs.items():
        try:
            body = poll_job(compose.base, job_id, within_s=120)
        except AssertionError as exc:
            pytest.fail(f"{exc}\n{compose.logs()}")
        assert body["status"] == "finished", (body, compose.logs())
        assert body["result"] == n * n and body["stdout"] == f"{n}\n", body


def test_sync_request_goes_through_the_queue(compose: Compose) -> None:
    script = ("import pandas as pd\n"
              "def main():\n"
              "    return {'sum': int(pd.Series([1, 2, 3]).sum())}\n")
    answer = requests.post(f"{compose.base}/execute", json={"script": script}, timeout=90)
    assert answer.status_code == 200, (answer.text[:2000], compose.logs())
    assert answer.json()["result"] == {"sum": 6}


def test_only_the_workers_have_the_jail_privileges(compose: Compose) -> None:
    """Workers: exactly the Makefile's DOCKER_RUN_FLAGS. api and redis: nothing at all."""
    flags = shlex.split(make_var("DOCKER_RUN_FLAGS"))
    caps = [flags[i + 1] for i, flag in enumerate(flags) if flag == "--cap-add"]
    opts = [flags[i + 1] for i, flag in enumerate(flags) if flag == "--security-opt"]
    workers = compose.containers("worker")
    assert len(workers) == WORKERS, workers
    for container in workers:
        host = inspect(container)["HostConfig"]
        assert sorted(host["CapAdd"] or []) == sorted(caps), host["CapAdd"]
        assert sorted(host["SecurityOpt"] or []) == sorted(opts), host["SecurityOpt"]
    for service in ("api", "redis"):
        (container,) = compose.containers(service)
        found = inspect(container)
        host = found["HostConfig"]
        assert not host["CapAdd"] and host["CapDrop"] == ["ALL"], (service, host)
        assert host["SecurityOpt"] == ["no-new-privileges:true"], (service, host)
        assert host["ReadonlyRootfs"] and not host["Privileged"], (service, host)
        assert found["Config"]["User"] not in ("", "root", "0"), (service, found["Config"])


# Run inside the api container: the TCP ports listened on (but Docker's DNS resolver's, on
# 127.0.0.11), and the uid of each nginx and gunicorn process. No procps there.
API_PROCESSES = """
import os
ports = set()
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    for row in open(table).read().splitlines()[1:]:
        address, port = row.split()[1].rsplit(":", 1)
        if row.split()[3] == "0A" and address != "0B00007F":
            ports.add(int(port, 16))
uids = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    argv = open(f"/proc/{pid}/cmdline", "rb").read()
    for name in ("nginx", "gunicorn"):
        if pid == str(os.getpid()):  # this script's own command line names both
            break
        if name.encode() in argv:
            uids.setdefault(name, set()).add(os.stat(f"/proc/{pid}").st_uid)
print(sorted(ports), {name: sorted(found) for name, found in sorted(uids.items())})
"""


def test_the_api_is_behind_nginx_unprivileged(compose: Compose) -> None:
    """Stalled connections, more than gunicorn has threads, delay no one; nginx answers a
    malformed request itself, in JSON; nginx and gunicorn run as the container's user, and
    only nginx listens on a port."""
    (container,) = compose.containers("api")
    stalled = [socket.create_connection(("127.0.0.1", compose.port), timeout=10) for _ in range(STALLED)]
    try:
        for sock in stalled:
            sock.sendall(b"POST /execute HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        answer = requests.get(f"{compose.base}/health", timeout=10)
        assert answer.status_code == 200, (answer.text, compose.logs())
        bad, body = raw(compose.base, b"GARBAGE\r\n\r\n")
        assert bad.status == 400 and json.loads(body)["error"]["code"] == "bad_request", body
    finally:
        for sock in stalled:
            sock.close()
    found = docker("exec", container, "/usr/bin/python3", "-c", API_PROCESSES).stdout
    assert found.strip() == "[8080] {'gunicorn': [10001], 'nginx': [10001]}", found


def test_redis_is_not_published_and_needs_the_password(compose: Compose) -> None:
    (container,) = compose.containers("redis")
    assert not inspect(container)["HostConfig"]["PortBindings"], "redis must not be published"
    done = docker("exec", container, "redis-cli", "ping", check=False)
    assert "NOAUTH" in done.stdout + done.stderr, done.stdout


def test_metrics_of_the_api_and_of_each_worker(compose: Compose) -> None:
    """The unprivileged, read-only api serves /metrics (its multiprocess directory in /tmp);
    each worker serves its own on the backend network, never published."""
    job_id = submit_async(compose.base, "def main(): return 3")
    assert poll_job(compose.base, job_id, within_s=60)["result"] == 3
    answer = requests.get(f"{compose.base}/metrics", timeout=10)
    assert answer.status_code == 200, answer.text[:2000]
    samples = [s for f in text_string_to_metric_families(answer.text) for s in f.samples]
    api = {s.name: s.value for s in samples if not s.labels}
    assert api["pysandbox_workers"] == WORKERS and api["pysandbox_queue_persistent"] == 1
    assert sum(s.value for s in samples if s.name == "pysandbox_http_requests_total"
               and s.labels["status"] == "202") >= 1
    runs = 0.0
    for container in compose.containers("worker"):
        assert not inspect(container)["HostConfig"]["PortBindings"], "worker metrics are never published"
        text = docker("exec", container, "/opt/venv/bin/python", "-c",
                      "import urllib.request; print(urllib.request.urlopen("
                      "'http://127.0.0.1:9100/metrics', timeout=5).read().decode())").stdout
        runs += sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                    if s.name == "pysandbox_runs_total")
    assert runs >= 1


def test_sigkill_of_redis_mid_burst_loses_no_accepted_job(compose: Compose) -> None:
    """50 async jobs; redis SIGKILLed (from the host, as a crash) after the 25th was accepted and
    restarted by compose. Every job answered 202 ends finished, failed or canceled, never 404;
    submissions while redis is down are 503 queue_unavailable (and are retried, as are those past
    this one client's share of the queue, 503 busy, or past its storage budget); the workers
    reconnect without being restarted."""
    (redis,) = compose.containers("redis")
    workers = compose.containers("worker")
    script = "import time\ndef main():\n    time.sleep(0.2)\n    return 1\n"
    accepted: list[str] = []
    refused: collections.Counter[str] = collections.Counter()
    killed = False
    while len(accepted) < BURST:
        if len(accepted) == BURST // 2 and not killed:
            os.kill(inspect(redis)["State"]["Pid"], signal.SIGKILL)
            killed = True
        try:
            answer = requests.post(f"{compose.base}/execute?async=1", json={"script": script}, timeout=30)
        except requests.RequestException as exc:
            pytest.fail(f"the api did not answer while redis was down: {exc}")
        if answer.status_code == 202:
            accepted.append(answer.json()["id"])
            continue
        assert answer.status_code == 503, answer.text
        code = answer.json()["error"]["code"]
        assert code in ("queue_unavailable", "storage_budget_exceeded") or (
            code == "busy" and "its share" in answer.text), answer.text
        refused[code] += 1
        time.sleep(0.2)
    ended: dict[str, str] = {}
    deadline = time.monotonic() + 240
    while len(ended) < len(accepted) and time.monotonic() < deadline:
        for job_id in accepted:
            if job_id in ended:
                continue
            answer = requests.get(f"{compose.base}/jobs/{job_id}", timeout=10)
            assert answer.status_code != 404, f"job {job_id} was lost: {answer.text}\n{compose.logs()}"
            body = answer.json()
            if answer.status_code == 200 and body["status"] in ("finished", "failed", "canceled"):
                ended[job_id] = body["status"] if body["status"] == "finished" else \
                    f"{body['status']} {body['error']['code']}"
        time.sleep(0.5)
    counts = collections.Counter(ended.values())
    print(f"\nredis SIGKILL mid-burst: {len(accepted)} accepted, submissions refused 503 meanwhile: "
          f"{dict(refused)}; ended: {dict(counts)}")
    assert refused["queue_unavailable"] >= 1, "a submission met redis down"
    assert len(ended) == len(accepted) == BURST, (counts, compose.logs())
    assert inspect(redis)["RestartCount"] >= 1, "compose restarted redis"
    assert all(inspect(worker)["RestartCount"] == 0 for worker in workers), compose.logs()
    assert set(counts) <= {"finished", "failed worker_lost"}, counts
    assert counts["finished"] >= BURST // 2, counts


def test_sessions_live_in_the_workers_and_a_killed_ones_are_lost_quickly(compose: Compose) -> None:
    """Sessions spread over both workers, each call reaching its own; a worker's container
    SIGKILLed: its sessions answer 410 lost within 5 s, the other's keep their state. Last in
    this module: it kills a worker."""
    wait_health(compose, WORKERS)
    sessions = []
    for n in range(4):  # PYSANDBOX_MAX_SESSIONS_PER_CLIENT's default; new ones go to each worker in turn
        answer = requests.post(f"{compose.base}/sessions", json={}, timeout=30)
        assert answer.status_code == 201, (answer.text, compose.logs())
        sessions.append(answer.json()["id"])
        call = requests.post(f"{compose.base}/sessions/{sessions[-1]}/execute",
                             json={"script": f"n = {n}"}, timeout=30)
        assert call.status_code == 200, call.text
    docker("kill", "-s", "KILL", compose.containers("worker")[0])
    started, answers = time.monotonic(), []
    for n, session_id in enumerate(sessions):
        answer = requests.post(f"{compose.base}/sessions/{session_id}/execute", json={"script": "n"},
                               timeout=30)
        assert answer.status_code in (200, 410), answer.text
        answers.append(answer.json()["result"] == n if answer.status_code == 200
                       else answer.json()["error"]["reason"])
    elapsed = time.monotonic() - started
    print(f"\nsessions after a worker's SIGKILL: {answers} in {elapsed:.1f} s")
    assert set(answers) == {True, "lost"}, answers  # spread over both; the live one's keep their state
    assert elapsed < 5 + 1, elapsed
