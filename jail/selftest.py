"""Escape probes run inside the jail at startup: the service serves only if every one fails.

A probe that escapes (or a jail that cannot start), or a run whose processes together hold
more than its memory limit unstopped, marks the service unhealthy; it never falls back to
running scripts with fewer protections.
"""
import logging
import re
from dataclasses import dataclass, field

from jail.cgroups import Cgroups, Enforcement
from jail.limits import Limits
from jail.nsjail import host_cgroups, run_once
from jail.outcome import Outcome, SandboxError, Status
from jail.paths import paths
from jail.sandbox import Sandbox
from jail.warm import START_TIMEOUT_S
from jail.watchdog import SLACK_MB, WATCH_INTERVAL_S

log = logging.getLogger(__name__)

PROBE_SCRIPT = r'''
import os, socket

def attempt(action):
    try:
        action()
        return True
    except Exception:
        return False

def main():
    return {
        "uid": os.getuid(),
        "gid": os.getgid(),
        "pid": os.getpid(),
        "hostname": socket.gethostname(),
        "env": sorted(os.environ),
        "inet_socket": attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM)),
        "inet6_socket": attempt(lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)),
        "host_file": attempt(lambda: open("/etc/passwd").read()),
        "proc": os.path.exists("/proc/1"),
        "write_usr": attempt(lambda: open("/usr/probe", "w")),
        "setuid_root": attempt(lambda: os.setuid(0)),
        "unshare": attempt(lambda: os.unshare(os.CLONE_NEWUSER)) if hasattr(os, "unshare") else False,
    }
'''

PROBE_TIMEOUT_S = 60.0
"""Generous: a probe takes well under a second, but a slow or emulated host (qemu without
KVM runs code 6-16 times slower) must not fail the self-test by time alone."""

MUST_FAIL = ("inet_socket", "inet6_socket", "host_file", "proc", "write_usr", "setuid_root",
             "unshare")

MEMORY_PROBE = r'''
import os, time

def main():
    pids = []
    for _ in range(3):
        pid = os.fork()
        if pid == 0:
            held = b"x" * (56 * 1024 * 1024)
            time.sleep(0.5)
            os._exit(0)
        pids.append(pid)
    return [os.waitpid(pid, 0)[1] for pid in pids]
'''
"""Three processes holding 168 MB in all, each within the run's 128 MB: the limit must hold
for the run as a whole (a cgroup, or the watchdog), not only per process (RLIMIT_AS)."""
MEMORY_PROBE_LIMITS = Limits(timeout_s=PROBE_TIMEOUT_S, memory_mb=128)


@dataclass(frozen=True)
class SelfTest:
    """The verdict of the startup probes."""

    passed: bool
    failures: list[str] = field(default_factory=list)
    degraded: list[str] = field(default_factory=list)
    enforcement: Enforcement = Enforcement.RLIMITS

    def to_dict(self) -> dict:
        """For /health."""
        return {"passed": self.passed, "failures": self.failures, "degraded": self.degraded}


def _degraded(cgroups: Cgroups) -> list[str]:
    """What is weaker on this host than where every limit is a cgroup's."""
    if cgroups.complete:
        return []
    if cgroups.enforcement is Enforcement.RLIMITS:
        return [f"no usable cgroups ({cgroups.missing_reason}): a run's total memory is bounded by a "
                f"watchdog over its processes (sampled every {WATCH_INTERVAL_S * 1000:g} ms, up to "
                f"{SLACK_MB} MB past the limit) and RLIMIT_AS per process; processes by RLIMIT_NPROC; "
                "CPU by RLIMIT_CPU, not to one core"]
    return [f"cgroup controllers missing ({cgroups.missing_reason}); rlimits enforce those limits"]


def _memory_bound(outcome: Outcome) -> list[str]:
    """The memory probe must be stopped: the run killed, or a child of it."""
    if outcome.status is Status.MEMORY_LIMIT:
        return []
    if outcome.ok and isinstance(outcome.result, list) and any(outcome.result):
        return []
    return [f"one-off: a run held more than its memory limit ({outcome.status.value}: "
            f"{outcome.result or outcome.message})"]


def policy_env() -> set[str]:
    """The variables nsjail.cfg gives a script: all that may be in its environment."""
    return set(re.findall(r'^envar: "([^=]+)=', paths().config.read_text(), re.M))


def _escapes(found: dict) -> list[str]:
    """Every way the probe's findings differ from a sealed jail."""
    failures = [f"{name} succeeded" for name in MUST_FAIL if found.get(name) is not False]
    if found.get("uid") != 65534 or found.get("gid") != 65534:
        failures.append(f"runs as uid {found.get('uid')} gid {found.get('gid')}, not 65534")
    if found.get("pid") != 1:
        failures.append("no private pid namespace")
    if found.get("hostname") != "sandbox":
        failures.append("no private uts namespace")
    extra = set(found.get("env") or ["?"]) - policy_env()
    if extra:
        failures.append(f"environment leaks {sorted(extra)}")
    return failures


def _probe_runs(sandbox: Sandbox | None) -> list[tuple[str, Outcome | None]]:
    """The probe run in a one-off jail, and in a warm jail when the sandbox keeps them."""
    runs: list[tuple[str, Outcome | None]] = [
        ("one-off", run_once(PROBE_SCRIPT, Limits(timeout_s=PROBE_TIMEOUT_S)))]
    pool = sandbox.pool if sandbox is not None else None
    if pool is not None:
        limits = Limits(timeout_s=PROBE_TIMEOUT_S, tmp_mb=pool.tmp_mb)
        runs.append(("warm", pool.run(PROBE_SCRIPT, limits, wait_s=START_TIMEOUT_S)))
    return runs


def self_test(sandbox: Sandbox | None = None) -> SelfTest:
    """Run the escape probes in real jails of each kind the sandbox uses (one-off only without
    one), and check that a run's memory is bounded as a whole; log and return the verdict."""
    cgroups = host_cgroups()
    degraded, enforcement = _degraded(cgroups), cgroups.enforcement
    try:
        runs = _probe_runs(sandbox)
        memory = run_once(MEMORY_PROBE, MEMORY_PROBE_LIMITS)
    except SandboxError as exc:
        log.error("self-test: the jail does not start: %s", exc)
        return SelfTest(False, ["the jail does not start"], degraded, enforcement)
    failures = []
    for kind, outcome in runs:
        if outcome is None or not outcome.ok or not isinstance(outcome.result, dict):
            log.error("self-test: %s probe ended %s", kind, outcome)
            failures.append(f"{kind} probe ended with {outcome.status.value if outcome else 'no jail'}")
            continue
        failures += [f"{kind}: {failure}" for failure in _escapes(outcome.result)]
    failures += _memory_bound(memory)
    if failures:
        log.error("self-test: the jail is not sealed: %s", "; ".join(failures))
    return SelfTest(not failures, failures, degraded, enforcement)
