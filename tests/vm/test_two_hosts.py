"""Two hosts, one queue (issue 22): Redis and a worker in the cgroup v2 VM (tests/support/vm.py),
the API and a worker on this host, which reach the VM's Redis only through the port qemu forwards
to this host's 127.0.0.1 (no other address is used).

In the VM, as docker-compose.yml runs them: Redis from the image (`pysandbox-supervise redis`:
password, append-only file fsync'd every second on a volume) and a worker container with the
Makefile's DOCKER_RUN_FLAGS, both with `--restart unless-stopped`. Here: gunicorn that only
enqueues, and a `python -m worker` process.

Jobs submitted to the API run on both hosts (GET /jobs/<id>'s `worker` says where). Then the
VM loses power (qemu SIGKILLed) while a long job runs on its worker, another on this host's, and
short jobs wait in the queue (enqueued more than a second before: the append-only file has
them). While Redis is away the API keeps answering, never a 500 or a hang. The VM boots again on
the same disk; Redis comes back with the queue. Then the VM's job ends `failed` with `worker_lost`
(docs/operating.md, "Losing a host": ALIVE_TTL_S after Redis is back), this host's long job is
answered `finished` (its worker stored the outcome once Redis was back), every queued job
finishes, this host's worker took jobs again without a restart, and the VM's worker came back.
"""
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from redis import Redis
from redis.exceptions import RedisError

from shared.queue import ALIVE_TTL_S
from tests.support.images import make_var
from tests.support.servers import gunicorn, workers
from tests.support.vm import QEMU, VM, build_disk

pytestmark = pytest.mark.vm

REDIS_PORT = 6379
"""Redis's port in the VM, forwarded to a port of this host's 127.0.0.1."""
PASSWORD = "two-hosts-test-only"
VM_WORKER = "vm-worker"
"""The VM worker container's name and host name (its jobs' `worker` starts with it)."""
NETWORK = "two-hosts"
LONG_S = 25
"""The long jobs' sleep: they are still running when the power goes."""
UP_TIMEOUT_S = 300
"""A worker's start (self-test, warm jail) under TCG takes tens of seconds."""
ANSWER_TIMEOUT_S = 15
"""What the API may take to answer while Redis is away (its Redis client's timeouts: 5 s to
connect, 10 s to read): anything slower is a hang."""


def sleeper(seconds: float, value: int) -> str:
    return f"import time\ndef main():\n    time.sleep({seconds})\n    return {value}"


@dataclass
class Cluster:
    vm: VM
    api: str
    redis_url: str
    host_worker: subprocess.Popen
    host_log: Path

    def explain(self, *facts: object) -> str:
        """A failure message: the facts, the host worker's log and the VM's side."""
        shown = " ".join(str(fact)[:3000] for fact in facts)
        host = self.host_log.read_text(errors="replace")[-4000:] if self.host_log.exists() else ""
        guest = "(the VM is off)"
        if self.vm.qemu is not None and self.vm.qemu.poll() is None:
            guest = self.vm.ssh(f"docker ps -a; docker logs --tail 60 {VM_WORKER} 2>&1; "
                                "docker logs --tail 30 redis 2>&1", check=False, timeout=60).stdout[-8000:]
        return (f"{shown}\n--- host worker ---\n{host}\n--- VM ---\n{guest}\n{self.vm.diagnostics()}"
                f"\n--- so ---\n{shown[:600]}")  # said again last: CI shows a failure's tail

    def submit(self, script: str, timeout_s: float = 10) -> str:
        answer = requests.post(f"{self.api}/execute?async=1", json={"script": script, "timeout": timeout_s},
                               timeout=ANSWER_TIMEOUT_S)
        assert answer.status_code == 202, self.explain(answer.status_code, answer.text)
        return answer.json()["id"]

    def job(self, job_id: str) -> dict[str, Any]:
        answer = requests.get(f"{self.api}/jobs/{job_id}", timeout=ANSWER_TIMEOUT_S)
        assert answer.status_code == 200, self.explain(job_id, answer.status_code, answer.text)
        return answer.json()

    def until(self, job_id: str, done: tuple[str, ...], within_s: float) -> dict[str, Any]:
        """Poll the job until its status is one of `done`."""
        deadline, body = time.monotonic() + within_s, {}
        while time.monotonic() < deadline:
            body = self.job(job_id)
            if body["status"] in done:
                return body
            time.sleep(0.2)
        pytest.fail(self.explain(f"job {job_id} not {done} within {within_s} s:", body))

    def worker_names(self) -> list[str]:
        """The names of the workers registered on the queue now."""
        keys = Redis.from_url(self.redis_url, socket_timeout=10).smembers("rq:workers")
        return sorted(key.decode().removeprefix("rq:worker:") for key in keys)  # type: ignore[union-attr]


def on_host(worker: str | None) -> bool:
    return bool(worker) and worker.startswith(f"{socket.gethostname()}.")  # type: ignore[union-attr]


def on_vm(worker: str | None) -> bool:
    return bool(worker) and worker.startswith(f"{VM_WORKER}.")  # type: ignore[union-attr]


def start_guest_services(vm: VM, image: str) -> None:
    """Redis and the worker in the VM, as docker-compose.yml runs them (restarted by Docker)."""
    redis = ["docker", "run", "-d", "--name", "redis", "--network", NETWORK, "--restart", "unless-stopped",
             "-p", f"{REDIS_PORT}:6379", "--user", "redis", "--read-only", "--cap-drop", "ALL",
             "--security-opt", "no-new-privileges:true", "-v", "redis-data:/var/lib/redis",
             # The guest has no apparmor_parser: Docker cannot load its default profile there.
             "--security-opt", "apparmor=unconfined",
             "-e", f"REDIS_PASSWORD={PASSWORD}", "--entrypoint", "/usr/bin/python3", image,
             "-I", "/usr/local/bin/pysandbox-supervise", "redis"]
    worker = ["docker", "run", "-d", "--name", VM_WORKER, "--hostname", VM_WORKER, "--network", NETWORK,
              "--restart", "unless-stopped", *shlex.split(make_var("DOCKER_RUN_FLAGS")),
              "-e", f"REDIS_URL=redis://:{PASSWORD}@redis:6379/0", image,
              "/opt/venv/bin/python", "-m", "worker"]
    vm.ssh(f"docker network create {NETWORK} && {shlex.join(redis)} && {shlex.join(worker)}")


def wait_redis(url: str, within_s: float) -> float:
    """Until Redis answers through the forwarded port; the seconds it took."""
    started = time.monotonic()
    while time.monotonic() < started + within_s:
        try:
            if Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5).ping():
                return time.monotonic() - started
        except RedisError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"Redis did not answer within {within_s} s")


def wait_workers(cluster: Cluster, within_s: float = UP_TIMEOUT_S, not_one_of: Collection[str] = ()) -> float:
    """Until a worker of each host is registered (not one of those named: Redis may still hold
    the registration of a worker lost with its host); the seconds it took."""
    started = time.monotonic()
    while time.monotonic() < started + within_s:
        try:
            names = [name for name in cluster.worker_names() if name not in not_one_of]
        except RedisError:
            names = []
        if any(map(on_host, names)) and any(map(on_vm, names)):
            return time.monotonic() - started
        time.sleep(1)
    pytest.fail(cluster.explain(f"no worker of each host within {within_s} s"))


@pytest.fixture(scope="module")
def vm(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VM]:
    """The booted VM with the image loaded and Redis and a worker started. Always shut down."""
    if shutil.which(QEMU) is None:
        pytest.skip(f"qemu cannot run here: no {QEMU} (apt-get install qemu-system-x86)")
    try:
        disk = build_disk()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    machine = VM(disk, tmp_path_factory.mktemp("vm"), [REDIS_PORT], [image])
    try:
        started = time.monotonic()
        machine.start()
        took = machine.wait_ssh()
        print(f"\nVM ({machine.accel}): ssh after {took:.1f} s")
        loading = time.monotonic()
        machine.load_image(image)
        print(f"VM: docker load took {time.monotonic() - loading:.1f} s")
        start_guest_services(machine, image)
        print(f"VM: ready (Redis and a worker started) after {time.monotonic() - started:.1f} s")
        yield machine
    except RuntimeError as exc:
        pytest.fail(str(exc))
    finally:
        machine.stop()


@pytest.fixture(scope="module")
def cluster(vm: VM, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """This host's API and worker on the VM's Redis, through the forwarded loopback port."""
    redis_url = f"redis://:{PASSWORD}@127.0.0.1:{vm.ports[REDIS_PORT]}/0"
    wait_redis(redis_url, UP_TIMEOUT_S)
    log = tmp_path_factory.mktemp("host") / "worker.log"
    # One client here (no API keys): the whole storage budget is its share (a job reserves ~25 MB).
    api_env = {"REDIS_URL": redis_url, "PYSANDBOX_EXECUTE_VIA_QUEUE": "true",
               "PYSANDBOX_STORAGE_BUDGET_PER_CLIENT_MB": "384"}
    with workers(redis_url, 1, log_path=log) as procs, gunicorn(api_env, wait_healthy=False) as api:
        found = Cluster(vm, api, redis_url, procs[0], log)
        print(f"both hosts' workers registered after {wait_workers(found):.1f} s more")
        yield found


def test_jobs_run_on_both_hosts_and_survive_the_vm_losing_power(cluster: Cluster) -> None:
    started = time.monotonic()
    # Both hosts take jobs: each worker is idle and waiting, and a job keeps it busy a second.
    ids = {cluster.submit(sleeper(1, n)): n for n in range(6)}
    ran = {job_id: cluster.until(job_id, ("finished", "failed"), 120) for job_id in ids}
    assert all(body["status"] == "finished" and body["result"] == ids[job_id]
               for job_id, body in ran.items()), cluster.explain(ran)
    where = [body["worker"] for body in ran.values()]
    print(f"\n6 jobs in {time.monotonic() - started:.1f} s, by worker: {where}")
    assert any(map(on_host, where)) and any(map(on_vm, where)), cluster.explain(where)

    # A long job on each host's worker (submitted until each has one), then queued jobs.
    running: dict[str, dict[str, Any]] = {}
    while not (any(on_vm(body["worker"]) for body in running.values())
               and any(on_host(body["worker"]) for body in running.values())):
        assert len(running) < 4, cluster.explain("long jobs did not reach both workers:", running)
        job_id = cluster.submit(sleeper(LONG_S, -1), timeout_s=LONG_S + 5)
        running[job_id] = cluster.until(job_id, ("running",), 60)
    on_the_vm = next(job_id for job_id, body in running.items() if on_vm(body["worker"]))
    on_the_host = next(job_id for job_id, body in running.items() if on_host(body["worker"]))
    queued = {cluster.submit(f"def main():\n    return {n} * {n}"): n * n for n in range(4)}
    time.sleep(1.5)  # the append-only file is fsync'd every second
    states = {job_id: cluster.job(job_id)["status"] for job_id in [*running, *queued]}
    assert states[on_the_vm] == "running", cluster.explain(states)
    assert all(states[job_id] == "queued" for job_id in queued), cluster.explain(states)

    vm_workers = [name for name in cluster.worker_names() if on_vm(name)]
    cut = time.monotonic()
    cluster.vm.power_cut()
    print(f"power cut: the VM's job {on_the_vm}, this host's {on_the_host}, {len(queued)} queued")

    # The host side keeps serving: named answers, never a 500 or a hang.
    asking = time.monotonic()
    assert requests.get(f"{cluster.api}/livez", timeout=ANSWER_TIMEOUT_S).status_code == 200
    ready = requests.get(f"{cluster.api}/readyz", timeout=ANSWER_TIMEOUT_S)
    assert ready.status_code == 503, cluster.explain(ready.status_code, ready.text)
    refused = requests.post(f"{cluster.api}/execute?async=1", json={"script": "def main(): return 1"},
                            timeout=ANSWER_TIMEOUT_S)
    assert refused.status_code == 503, cluster.explain(refused.status_code, refused.text)
    assert refused.json()["error"]["code"] == "queue_unavailable", refused.text
    looked = requests.get(f"{cluster.api}/jobs/{on_the_vm}", timeout=ANSWER_TIMEOUT_S)
    assert looked.status_code == 503 and looked.json()["error"]["code"] == "queue_unavailable", looked.text
    print(f"while the VM is off: /livez 200, /readyz {ready.json()}, POST and GET 503 queue_unavailable; "
          f"the four answers took {time.monotonic() - asking:.2f} s")

    # The same disk boots again; Docker restarts Redis (its append-only file has the queue) and the worker.
    booting = time.monotonic()
    cluster.vm.start(fresh=False)
    took = cluster.vm.wait_ssh()
    cluster.vm.ssh(f"until docker start redis {VM_WORKER}; do sleep 1; done", timeout=UP_TIMEOUT_S)
    wait_redis(cluster.redis_url, UP_TIMEOUT_S)
    redis_back = time.monotonic()
    print(f"reboot: ssh after {took:.1f} s, Redis answering {redis_back - booting:.1f} s after it began "
          f"(Docker restarting its containers), {redis_back - cut:.1f} s after the power cut")
    assert cluster.host_worker.poll() is None, cluster.explain("this host's worker died")

    lost = cluster.until(on_the_vm, ("finished", "failed", "canceled"), ALIVE_TTL_S + 20)
    lost_at = time.monotonic()
    assert lost["status"] == "failed" and lost["error"]["code"] == "worker_lost", cluster.explain(lost)
    print(f"the VM's job: worker_lost {lost_at - redis_back:.1f} s after Redis was back, "
          f"{lost_at - cut:.1f} s after the power cut")
    assert lost_at - redis_back <= ALIVE_TTL_S + 5, cluster.explain("worker_lost too late:", lost)

    kept = cluster.until(on_the_host, ("finished", "failed", "canceled"), LONG_S + 60)
    assert kept["status"] == "finished" and kept["result"] == -1, cluster.explain("host job:", kept)
    done = {job_id: cluster.until(job_id, ("finished", "failed", "canceled"), 120) for job_id in queued}
    assert all(body["status"] == "finished" and body["result"] == queued[job_id]
               for job_id, body in done.items()), cluster.explain(done)
    where = [body["worker"] for body in done.values()]
    assert any(map(on_host, where)), cluster.explain("the host's worker took no queued job:", where)
    assert requests.get(f"{cluster.api}/readyz", timeout=ANSWER_TIMEOUT_S).status_code == 200
    print(f"queued jobs all finished, by worker: {where}")

    again = wait_workers(cluster, not_one_of=vm_workers)
    print(f"the VM's worker registered again {time.monotonic() - booting:.1f} s after the reboot began "
          f"({again:.1f} s after the queued jobs finished); the test took {time.monotonic() - started:.1f} s")
