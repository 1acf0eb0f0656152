"""The one place that starts nsjail: run(script, limits) -> Outcome.

The policy lives in nsjail.cfg; this module adds only per-run values (limits, the
cgroups of this run, the mounts whose host paths vary by deployment). The script goes in
on stdin; stdout and stderr are read incrementally up to their cap; main()'s result comes
back on its own pipe and nsjail's log on another, so nothing the script prints can pass
for either.
"""
import functools
import logging
import math
import os
import re
import selectors
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from jail import cgroups
from jail.limits import MIB, Limits
from jail.outcome import Outcome, SandboxError, Status
from jail.protocol import parse_report
from jail.settings import JailSettings, settings

log = logging.getLogger(__name__)

SITE_IN_JAIL = "/opt/site"
CHUNK = 64 * 1024
MAX_LOG_BYTES = 64 * 1024
KILL_GRACE_S = 1.0
MEMORY_NEAR_LIMIT = 0.9
TMP_MOUNT = (
    'mount {{ dst: "/tmp" fstype: "tmpfs" rw: true is_bind: false noexec: true nosuid: true '
    'nodev: true options: "size={size},mode=1777" }}\n')
EXIT_RE = re.compile(rb"\) (exited with status: (\d+)|terminated with signal: (\w+))")


@dataclass
class RawRun:
    """What came out of one nsjail process, before interpretation."""

    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    report: bytearray = field(default_factory=bytearray)
    log: bytearray = field(default_factory=bytearray)
    killed_for: Status | None = None
    elapsed_s: float = 0.0
    peak_memory_bytes: int | None = None


@functools.cache
def harness_source() -> str:
    """The harness's code, passed as `python -c`: no host file of the service is mounted."""
    return settings().harness.read_text()


@functools.cache
def policy_file(tmp_mb: int) -> Path:
    """nsjail.cfg plus a /tmp of tmp_mb, written once per size to a root-only directory.

    The command line's --mount cannot set noexec/nosuid/nodev, so /tmp goes in the config.
    """
    directory = Path(tempfile.mkdtemp(prefix="pysandbox-policy-"))
    path = directory / f"nsjail-tmp{tmp_mb}.cfg"
    path.write_text(settings().config.read_text() + TMP_MOUNT.format(size=tmp_mb * MIB))
    return path


@functools.cache
def host_cgroups() -> cgroups.Cgroups:
    """The cgroup controllers of this host, detected once; a warning when any is missing."""
    found = cgroups.detect(settings().cgroup_root)
    if not found.complete:
        log.warning("cgroups incomplete (%s); falling back to rlimits for the rest: %s",
                    ",".join(sorted(found.available)) or "none", found.missing_reason)
    return found


def build_argv(conf: JailSettings, limits: Limits, run_cg: cgroups.RunCgroup,
               report_fd: int, log_fd: int) -> list[str]:
    """The nsjail command line for one run."""
    has = run_cg.cgroups.available
    argv = [
        conf.nsjail, "--config", str(policy_file(limits.tmp_mb)), "--log_fd", str(log_fd),
        "--pass_fd", str(report_fd),
        "--time_limit", str(math.ceil(limits.timeout_s) + 1),
        "--rlimit_cpu", str(math.ceil(limits.timeout_s) + 1),
        "--rlimit_fsize", str(limits.tmp_mb),
        "--rlimit_nofile", str(limits.max_open_files),
        "--rlimit_nproc", str(limits.max_pids),
        "--bindmount_ro", f"{conf.site_dir}:{SITE_IN_JAIL}",
    ]
    if "memory" in has:
        argv += ["--cgroup_mem_max", str(limits.memory_mb * MIB),
                 "--cgroup_mem_swap_max", "0",
                 "--cgroup_mem_mount", str(run_cg.cgroups.root / "memory"),
                 "--cgroup_mem_parent", f"{cgroups.PARENT}/{run_cg.name}",
                 "--rlimit_as", "max"]
    else:
        argv += ["--rlimit_as", str(limits.memory_mb)]
    if "pids" in has:
        argv += ["--cgroup_pids_max", str(limits.max_pids),
                 "--cgroup_pids_mount", str(run_cg.cgroups.root / "pids"),
                 "--cgroup_pids_parent", f"{cgroups.PARENT}/{run_cg.name}"]
    if "cpu" in has:
        argv += ["--cgroup_cpu_ms_per_sec", "1000",
                 "--cgroup_cpu_mount", str(run_cg.cgroups.root / "cpu"),
                 "--cgroup_cpu_parent", f"{cgroups.PARENT}/{run_cg.name}"]
    return argv + ["--", conf.python, "-u", "-I", "-S", "-B", "-c", harness_source(),
                   str(report_fd)]


def run(script: str, limits: Limits) -> Outcome:
    """Run one script in a fresh jail and say how it ended.

    Raises SandboxError when the jail itself could not run the script.
    """
    conf = settings()
    with cgroups.run_cgroup(host_cgroups()) as run_cg:
        raw = _execute(conf, limits, run_cg, script.encode("utf-8", "surrogatepass"))
        raw.peak_memory_bytes = run_cg.peak_memory_bytes()
    return interpret(raw, limits)


def _execute(conf: JailSettings, limits: Limits, run_cg: cgroups.RunCgroup,
             source: bytes) -> RawRun:
    report_r, report_w = os.pipe()
    log_r, log_w = os.pipe()
    try:
        argv = build_argv(conf, limits, run_cg, report_w, log_w)
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, pass_fds=(report_w, log_w),
                                env={}, start_new_session=True)
    except OSError as exc:
        for fd in (report_r, report_w, log_r, log_w):
            os.close(fd)
        raise SandboxError(f"could not start nsjail: {exc}") from exc
    os.close(report_w)
    os.close(log_w)
    with os.fdopen(report_r, "rb", buffering=0) as report, \
            os.fdopen(log_r, "rb", buffering=0) as log_pipe:
        return _pump(proc, source, limits, report, log_pipe)


def _pump(proc: subprocess.Popen, source: bytes, limits: Limits, report, log_pipe) -> RawRun:
    """Feed the script in and read every pipe until the jail is gone, enforcing caps and time."""
    raw, start = RawRun(), time.monotonic()
    deadline = start + limits.timeout_s
    sel = selectors.DefaultSelector()
    assert proc.stdin and proc.stdout and proc.stderr
    os.set_blocking(proc.stdin.fileno(), False)
    pending = memoryview(source)
    if pending:
        sel.register(proc.stdin, selectors.EVENT_WRITE)
    else:
        proc.stdin.close()
    sinks = {proc.stdout: raw.stdout, proc.stderr: raw.stderr, report: raw.report,
             log_pipe: raw.log}
    for pipe in sinks:
        sel.register(pipe, selectors.EVENT_READ)
    try:
        while sel.get_map():
            now = time.monotonic()
            if raw.killed_for is None and now >= deadline:
                raw.killed_for = _stop(proc, Status.TIMEOUT)
            if raw.killed_for is not None and now >= deadline + 2 * KILL_GRACE_S:
                break
            for key, _ in sel.select(timeout=max(0.01, min(deadline - now, 0.5))):
                if key.fileobj is proc.stdin:
                    pending = _feed(sel, proc.stdin, pending)
                    continue
                chunk = os.read(key.fd, CHUNK)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                sinks[key.fileobj] += chunk
                over = _over_cap(raw, limits)
                if over is not None and raw.killed_for is None:
                    raw.killed_for = _stop(proc, over)
    finally:
        sel.close()
        _reap(proc)
        proc.stdin.close() if not proc.stdin.closed else None
        proc.stdout.close()
        proc.stderr.close()
    raw.elapsed_s = time.monotonic() - start
    return raw


def _feed(sel: selectors.BaseSelector, stdin, pending: memoryview) -> memoryview:
    """Write what the pipe takes of the script; close stdin when all of it is in."""
    try:
        pending = pending[os.write(stdin.fileno(), pending[:CHUNK]):]
    except BrokenPipeError:
        pending = pending[:0]
    if not pending:
        sel.unregister(stdin)
        stdin.close()
    return pending


def _over_cap(raw: RawRun, limits: Limits) -> Status | None:
    """Trim what was read to its cap; say which cap, if any, the jail went past."""
    del raw.log[MAX_LOG_BYTES:]
    if len(raw.stdout) + len(raw.stderr) > limits.max_output_bytes:
        keep_out = min(len(raw.stdout), limits.max_output_bytes)
        del raw.stdout[keep_out:]
        del raw.stderr[limits.max_output_bytes - keep_out:]
        return Status.OUTPUT_LIMIT
    if len(raw.report) > limits.max_result_bytes + MAX_LOG_BYTES:
        del raw.report[:]
        return Status.RESULT_TOO_LARGE
    return None


def _stop(proc: subprocess.Popen, reason: Status) -> Status:
    """Ask nsjail to kill the jail (it then removes its cgroups); _reap forces it if need be."""
    try:
        proc.send_signal(signal.SIGTERM)
    except ProcessLookupError:
        pass
    return reason


def _reap(proc: subprocess.Popen) -> None:
    try:
        proc.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        log.error("nsjail pid %d ignored SIGTERM; killing it", proc.pid)
        proc.kill()
        proc.wait()


def interpret(raw: RawRun, limits: Limits) -> Outcome:
    """Turn what the jail produced into an Outcome."""
    common = {"stdout": raw.stdout.decode("utf-8", "replace"),
              "stderr": raw.stderr.decode("utf-8", "replace"),
              "output_truncated": raw.killed_for is Status.OUTPUT_LIMIT,
              "duration_ms": round(raw.elapsed_s * 1000)}
    if raw.killed_for is not None:
        return Outcome(raw.killed_for, message=_kill_message(raw.killed_for, limits), **common)
    if raw.report:
        return parse_report(bytes(raw.report), limits.max_result_bytes, common)
    return Outcome(**_without_report(raw, limits), **common)


def _kill_message(status: Status, limits: Limits) -> str:
    return {
        Status.TIMEOUT: f"the script ran longer than its {limits.timeout_s:g} s time limit",
        Status.OUTPUT_LIMIT: f"the script printed more than {limits.max_output_bytes} bytes",
        Status.RESULT_TOO_LARGE: f"main() returned more than {limits.max_result_bytes} bytes of JSON",
    }[status]


def _without_report(raw: RawRun, limits: Limits) -> dict:
    """Why the jail ended without a report: a limit, the script's own exit, or a broken jail."""
    found = EXIT_RE.search(bytes(raw.log))
    if found is None or b"[F]" in raw.log or b"Couldn't launch" in raw.log:
        tail = raw.log[-2000:].decode("utf-8", "replace")
        raise SandboxError(f"nsjail did not run the script: {tail}")
    exit_code, signame = found.group(2), found.group(3)
    if signame is None:
        return {"status": Status.NO_RESULT,
                "message": f"the script exited (status {int(exit_code)}) before main() returned"}
    sig = signame.decode()
    peak = raw.peak_memory_bytes
    if peak is not None and peak >= MEMORY_NEAR_LIMIT * limits.memory_mb * MIB:
        return {"status": Status.MEMORY_LIMIT,
                "message": f"the script used more than its {limits.memory_mb} MB memory limit"}
    if sig in ("SIGKILL", "SIGXCPU"):
        return {"status": Status.TIMEOUT,
                "message": "the script used more CPU time than its time limit allows"}
    return {"status": Status.NO_RESULT,
            "message": f"the script was killed by {sig} before main() returned"}
