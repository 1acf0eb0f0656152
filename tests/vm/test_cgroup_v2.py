"""The image on a cgroup v2 host, as users run it: a Debian 12 VM (tests/support/vm.py) with systemd's
unified hierarchy and Debian's docker.io (systemd cgroup driver).

Three profiles, each a container of the image built by `make image`, reached over HTTP from
here through qemu's loopback port forwards:
  A  the Makefile's DOCKER_RUN_FLAGS (SYS_ADMIN: the jail gets the container's cgroup v2)
  B  the Cloud Run profile: no SYS_ADMIN, so the entrypoint's keeper mounts the container's
     cgroup v2 in a user namespace of its own, and the limits are the same cgroups as in A
  C  the Cloud Run profile in a 2 GiB container, where four runs at the default limit fit
A and B with `--memory 1g`: too small for four runs at the default limit beside the service,
so admission by memory must make runs wait their turn; a script that escaped its limit would
hit the container's, and the kernel's OOM killer might pick a service process: the tests
check that never happens.
"""
import os
import shlex
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from tests.image.test_docker import DEFAULT_MEMORY_MB, DEFAULT_WORKERS
from tests.support.hostile import CPU_HOG, FORK_BOMB, MEMORY_SUM, TMP_FILL, memory_bound_problem, post_in_turn
from tests.support.images import SERVICE_PARTS, make_var
from tests.support.vm import QEMU, VM, build_disk

pytestmark = pytest.mark.vm

HEALTH_TIMEOUT_S = 600
"""The service's start and self-test under TCG emulation take minutes: four warm jails and three
Python services start at once on two emulated CPUs."""
ROUNDS = int(os.environ.get("PYSANDBOX_VM_ROUNDS", "3"))
MEMORY_SUM_TIMEOUT_S = 30
"""The longest a run may ask for: four MEMORY_SUM runs at once (profile C admits all four)
share the guest's two emulated CPUs, and a run took up to 21 s of wall time (7-8 s of CPU)
before its cgroup's OOM kill ended it."""


@dataclass(frozen=True)
class Profile:
    name: str
    flags: list[str]
    guest_port: int
    enforcement: str
    memory_mb: int
    """The container's memory limit."""


def profiles() -> list[Profile]:
    cloud_run = ["--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined"]
    return [
        Profile("A", [*shlex.split(make_var("DOCKER_RUN_FLAGS")), "--memory", "1g"], 8080,
                "cgroup v2", 1024),
        Profile("B", [*cloud_run, "--memory", "1g"], 8081, "cgroup v2 (user namespace)", 1024),
        Profile("C", [*cloud_run, "--memory", "2g"], 8082, "cgroup v2 (user namespace)", 2048),
    ]


@pytest.fixture(scope="module")
def vm(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VM]:  # noqa: F811
    """The booted VM with the image loaded. Always shut down."""
    if shutil.which(QEMU) is None:
        pytest.skip(f"qemu cannot run here: no {QEMU} (apt-get install qemu-system-x86)")
    try:
        disk = build_disk()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    machine = VM(disk, tmp_path_factory.mktemp("vm"), [p.guest_port for p in profiles()], [image])
    try:
        machine.start()
        took = machine.wait_ssh()
        print(f"\nVM ({machine.accel}): ssh after {took:.1f} s")
        started = time.monotonic()
        machine.load_image(image)
        print(f"VM: docker load took {time.monotonic() - started:.1f} s")
        yield machine
    except RuntimeError as exc:
        pytest.fail(str(exc))
    finally:
        machine.stop()


@dataclass(frozen=True)
class Service:
    profile: Profile
    container: str
    base: str
    vm: VM

    def docker(self, *args: str) -> str:
        """`docker <args>` in the VM; its stdout. A failure fails the test, with the logs."""
        done = self.vm.ssh(shlex.join(["docker", *args]), check=False)
        if done.returncode != 0:
            pytest.fail(self.explain(f"docker {shlex.join(args)} failed:", done.stdout,
                                     done.stderr))
        return done.stdout

    def diagnostics(self) -> str:
        logs = self.vm.ssh(f"docker logs --tail 200 {self.container} 2>&1", check=False)
        return f"--- docker logs ---\n{logs.stdout[-8000:]}\n{self.vm.diagnostics()}"

    def explain(self, *facts: object) -> str:
        """A failure message: the facts, then the container's log and the VM's console."""
        shown = " ".join(str(fact)[:2000] for fact in facts)
        # Said again last: CI shows a failure's tail.
        return f"profile {self.profile.name}: {shown}\n{self.diagnostics()}\n--- so ---\n" \
               f"profile {self.profile.name}: {shown[:600]}"

    def state(self) -> str:
        """`<status> <restart count>` as docker inspect sees the container."""
        return self.docker("inspect", "-f", "{{.State.Status}} {{.RestartCount}}",
                           self.container).strip()

    def service_pids(self) -> dict[int, str]:
        """The service's own processes (pid -> command line), as seen from the guest."""
        top = self.docker("top", self.container, "-eo", "pid,args").splitlines()[1:]
        rows = (line.strip().split(None, 1) for line in top)
        return {int(pid): args for pid, args in rows if any(p in args for p in SERVICE_PARTS)}


@pytest.fixture(scope="module", params=profiles(), ids=lambda p: p.name)
def service(request: pytest.FixtureRequest, vm: VM, image: str) -> Iterator[Service]:  # noqa: F811
    """The image running in the VM with one profile's flags: healthy, with all its workers
    registered (each passed its own self-test), so the whole service has started."""
    profile: Profile = request.param
    name = f"pysandbox-{profile.name.lower()}"
    vm.ssh(shlex.join(["docker", "run", "-d", "--name", name,
                       "-p", f"{profile.guest_port}:8080", *profile.flags, image]))
    found = Service(profile, name, f"http://127.0.0.1:{vm.ports[profile.guest_port]}", vm)
    try:
        started, last = time.monotonic(), "no answer yet"
        while time.monotonic() < started + HEALTH_TIMEOUT_S:
            try:
                answer = requests.get(f"{found.base}/health", timeout=10)
                workers = answer.json().get("queue", {}).get("workers")
                if answer.status_code == 200 and workers == DEFAULT_WORKERS:
                    break
                last = f"HTTP {answer.status_code}: {answer.text[:1000]}"
            except requests.RequestException as exc:
                last = repr(exc)
            if not found.state().startswith("running"):
                break
            time.sleep(1)
        else:
            pytest.fail(found.explain(f"/health never answered 200 ({last})"))
        if not found.state().startswith("running"):
            pytest.fail(found.explain(f"the container stopped ({last})"))
        print(f"\nprofile {profile.name}: healthy after {time.monotonic() - started:.1f} s")
        yield found
    finally:
        vm.ssh(f"docker rm -f {name}", check=False)


def run(service: Service, script: str, timeout_s: float = 20) -> tuple[int, dict[str, Any]]:
    """POST /execute as a patient client (503 busy retried: admission by memory may make a run
    wait its turn); (HTTP status, JSON body)."""
    answer = post_in_turn(f"{service.base}/execute", {"script": script, "timeout": timeout_s})
    return answer.status_code, answer.json()


def run_all(service: Service, scripts: list[str], timeout_s: float = 20) -> list[tuple[int, dict[str, Any]]]:
    """The scripts' runs, all at once."""
    with ThreadPoolExecutor(len(scripts)) as pool:
        return list(pool.map(lambda script: run(service, script, timeout_s), scripts))


def assert_still_serving(service: Service) -> None:
    status, body = run(service, "def main(): return 1")
    assert (status, body.get("result")) == (200, 1), service.explain(status, body)


def assert_memory_bounded(service: Service, status: int, body: dict[str, Any]) -> None:
    """A MEMORY_SUM run stayed within its limit, by its cgroup (tests/support/hostile.py says how); not
    a timeout: admitted runs never crowd the container into thrashing."""
    problem = memory_bound_problem(status, body, DEFAULT_MEMORY_MB)
    assert problem is None, service.explain(f"{problem}:", status, body)


def assert_no_oom_kill_outside_the_runs(service: Service) -> None:
    """Every OOM kill the guest's kernel logged was in a run's own cgroup (under NSJAIL/): the
    container's own limit never made the kernel kill anything."""
    kills = [line for line in service.vm.ssh("dmesg").stdout.splitlines() if "oom-kill:" in line]
    outside = [line for line in kills if "oom_memcg=" in line and "/NSJAIL/" not in
               line.split("oom_memcg=", 1)[1].split(",", 1)[0]]
    assert not outside, service.explain("OOM kills outside the runs' cgroups:", outside)


# --- the tests -----------------------------------------------------------------------------

def test_guest_is_cgroup_v2(service: Service) -> None:
    """The tier tests what it claims: cgroup v2 and the systemd driver, in the container too."""
    info = service.docker("info", "-f", "{{.CgroupVersion}} {{.CgroupDriver}}").split()
    assert info == ["2", "systemd"], info
    facts = service.docker(
        "exec", service.container, "sh", "-c",
        "stat -fc %T /sys/fs/cgroup; cat /proc/self/cgroup; "
        "cat /sys/fs/cgroup/cgroup.controllers; cat /sys/fs/cgroup/cgroup.subtree_control; "
        "grep cgroup /proc/self/mountinfo; cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max "
        "/sys/fs/cgroup/pids.max; ls /sys/fs/cgroup")
    print(f"\nprofile {service.profile.name}, in the container:\n{facts}")
    assert facts.split("\n", 1)[0] == "cgroup2fs", service.explain(facts)


def test_health_reports_enforcement_and_the_memory_budget(service: Service) -> None:
    answer = requests.get(f"{service.base}/health", timeout=10)
    body = answer.json()
    assert answer.status_code == 200 and body["selftest"]["passed"] is True, service.explain(body)
    assert body.get("enforcement") == service.profile.enforcement, service.explain(body)
    assert body["selftest"]["degraded"] == [], service.explain(body)
    memory = body["memory"]
    assert memory["total_bytes"] == service.profile.memory_mb * 2**20, service.explain(body)
    assert memory["source"].startswith("memory.max of /sys/fs/cgroup"), service.explain(body)
    print(f"\nprofile {service.profile.name}: {memory}")


def test_memory_sum_of_children_is_bounded(service: Service) -> None:
    status, body = run(service, MEMORY_SUM)
    print(f"\nprofile {service.profile.name}: {outcome(status, body)}, "
          f"peak_memory_mb {body.get('peak_memory_mb')}")
    assert_memory_bounded(service, status, body)
    assert_still_serving(service)


def test_concurrent_memory_sums_kill_no_service_process(service: Service) -> None:
    """Four MEMORY_SUM runs at once, ROUNDS times: the service itself comes through untouched
    (checked first: the worse failure), every run was bounded by its cgroup (what does not fit
    in the container waits its turn), and the kernel killed nothing outside the runs."""
    before = service.service_pids()
    assert any("gunicorn" in args for args in before.values()), service.explain(before)
    answers = []
    for round_no in range(ROUNDS):
        answers += run_all(service, [MEMORY_SUM] * 4, timeout_s=MEMORY_SUM_TIMEOUT_S)
        assert service.state() == "running 0", service.explain(f"round {round_no}:", answers)
    after = service.service_pids()
    seen = Counter(outcome(status, body) for status, body in answers)
    peaks = [body.get("peak_memory_mb") or 0 for _, body in answers]
    oom_killed = service.docker("inspect", "-f", "{{.State.OOMKilled}}", service.container).strip()
    print(f"\nprofile {service.profile.name}: {ROUNDS} rounds x 4: {dict(seen)}, "
          f"peak_memory_mb at most {max(peaks)}, OOMKilled {oom_killed}")
    assert after == before, service.explain("service processes changed:", before, after)
    assert_still_serving(service)
    for status, body in answers:
        assert_memory_bounded(service, status, body)
    assert_no_oom_kill_outside_the_runs(service)


def outcome(status: int, body: dict[str, Any]) -> str:
    """An answer in a word: the error code, or 200 with how many children were killed."""
    if status != 200:
        return body.get("error", {}).get("code", str(status))
    killed = sum(code != 0 for code in body["result"]["codes"])
    return f"200 ({killed} of {len(body['result']['codes'])} children killed)"


def test_fork_bomb_leaves_the_service_serving(service: Service) -> None:
    status, body = run(service, FORK_BOMB, timeout_s=5)
    assert status in (200, 422), service.explain(status, body)
    if status == 422:
        assert body["error"]["code"] in ("timeout", "main_error", "memory_limit"), body
    assert service.state() == "running 0", service.explain(status, body)
    assert_still_serving(service)


def test_cpu_hogs_get_one_core_each(service: Service) -> None:
    """Four spinning processes per run: alone (the guest has 2 CPUs to give it), then two runs
    at once; a run's CPU time may not exceed its wall time by much (cpu.max: one core)."""
    answers = [run(service, CPU_HOG)] + run_all(service, [CPU_HOG] * 2)
    for status, body in answers:
        assert status == 200, service.explain(status, body)
        assert "cpu_ms" in body and "duration_ms" in body, body
        assert isinstance(body["cpu_ms"], int), body
        assert body["cpu_ms"] <= 1.25 * body["duration_ms"] + 200, body


def test_tmp_fill_ends_in_an_error(service: Service) -> None:
    status, body = run(service, TMP_FILL)
    if status == 200:
        assert body["result"]["error"], body
    else:
        assert status == 422, service.explain(status, body)
    assert_still_serving(service)
