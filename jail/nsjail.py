"""The one place that builds nsjail command lines, and the one-off jail: a fresh nsjail per run.

The policy lives in nsjail.cfg; this module adds only per-run values (limits, the
cgroups of the run, the mounts whose host paths vary by deployment). Warm jails
(jail/warm.py) start nsjail through jail_argv() too, with the warm variant of the policy.
"""
import functools
import logging
import os
import re
import resource
import select
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

from jail import cgroups
from jail.limits import MIB, Limits
from jail.outcome import Outcome, SandboxError
from jail.paths import paths
from jail.pipes import KILL_GRACE_S, RunPipes, pump
from jail.protocol import interpret
from jail.runinput import RunInput, envelope
from jail.watchdog import MemoryWatch

log = logging.getLogger(__name__)

SITE_IN_JAIL = "/opt/site"
OOM_FIRST = ("/usr/bin/choom", "-n", "1000", "--")
TMP_MOUNT = (
    'mount {{ dst: "/tmp" fstype: "tmpfs" rw: true is_bind: false noexec: true nosuid: true '
    'nodev: true options: "size={size},mode=1777" }}\n')
EXIT_RE = re.compile(rb"\) (?:exited with status: (\d+)|terminated with signal: (\w+))")
WARM_EDITS = (
    # The zygote is root of the warm jail's user namespace (uid 65533 outside), so that it
    # can give each run fresh namespaces; every run drops to 65534 before user code.
    ('uidmap { inside_id: "65534" outside_id: "65534" count: 1 }',
     'uidmap { inside_id: "0" outside_id: "65533" count: 1 }\n'
     'uidmap { inside_id: "65534" outside_id: "65534" count: 1 }'),
    ('gidmap { inside_id: "65534" outside_id: "65534" count: 1 }',
     'gidmap { inside_id: "0" outside_id: "65533" count: 1 }\n'
     'gidmap { inside_id: "65534" outside_id: "65534" count: 1 }'),
    ("keep_caps: false", "keep_caps: true"),
    # mount, unshare and setns are what the zygote uses per run; its children deny them
    # again in a seccomp filter stacked on this one (jail/zygote.py) before any user code.
    ("  mount, umount, pivot_root, chroot, unshare, setns,", "  umount, pivot_root, chroot,"),
)


@functools.cache
def harness_source() -> str:
    """The harness's code, passed as `python -c`: no host file of the service is mounted."""
    return paths().harness.read_text()


@functools.cache
def policy_file(tmp_mb: int, warm: bool = False) -> Path:
    """nsjail.cfg (or its warm variant) plus a /tmp of tmp_mb, written once to a root-only dir.

    The command line's --mount cannot set noexec/nosuid/nodev, so /tmp goes in the config.
    """
    text = paths().config.read_text()
    if warm:
        for old, new in WARM_EDITS:
            assert text.count(old) == 1, f"nsjail.cfg no longer has {old!r}"
            text = text.replace(old, new)
    path = Path(tempfile.mkdtemp(prefix="pysandbox-policy-")) / f"nsjail-{tmp_mb}-{warm}.cfg"
    path.write_text(text + TMP_MOUNT.format(size=tmp_mb * MIB))
    return path


@functools.cache
def host_cgroups() -> cgroups.Cgroups:
    """The cgroup controllers of this host, detected once; a warning when any is missing."""
    where = paths()
    found = cgroups.detect(where.cgroup_root, userns=where.cgroup_keeper is not None)
    swept = cgroups.sweep_stale(found)
    if swept:
        log.info("removed %d run cgroups that killed processes had left", swept)
    if not found.complete:
        log.warning("cgroups incomplete (%s); falling back to rlimits for the rest: %s",
                    ",".join(sorted(found.available)) or "none", found.missing_reason)
    return found


def jail_argv(policy: Path, log_fd: int, pass_fd: int, limit_args: list[str],
              entry: str, *entry_args: str) -> list[str]:
    """An nsjail command line running the harness, then `entry`, as python -c.

    nsjail starts through choom with oom_score_adj 1000, which every process of the jail
    inherits and none can lower: when memory runs out beyond a run's own limit (a
    container's, a host's), the kernel's OOM killer takes a jailed process, never the service."""
    conf = paths()
    return [*OOM_FIRST, conf.nsjail, "--config", str(policy), "--log_fd", str(log_fd),
            "--pass_fd", str(pass_fd),
            "--bindmount_ro", f"{conf.site_dir}:{SITE_IN_JAIL}", *limit_args,
            "--", conf.python, "-u", "-I", "-S", "-B", "-c", harness_source() + "\n" + entry,
            *entry_args]


def one_off_limits(limits: Limits, run_cg: cgroups.RunCgroup) -> list[str]:
    """Per-run limits of a one-off jail: rlimits, and cgroups where the host has them."""
    args = ["--time_limit", str(limits.cpu_s), "--rlimit_cpu", str(limits.cpu_s),
            "--rlimit_fsize", str(limits.tmp_mb), "--rlimit_nofile", str(limits.max_open_files),
            "--rlimit_nproc", str(limits.max_pids)]
    memory = ["--rlimit_as", "max"] if "memory" in run_cg.cgroups.available else [
        "--rlimit_as", str(limits.memory_mb)]
    return args + memory + run_cg.bound(limits.memory_mb * MIB, limits.max_pids)


def jail_stdin(script: str, inputs: RunInput | None) -> bytes:
    """What the harness reads on stdin: the bare script, or the envelope with its inputs."""
    source = script.encode("utf-8", "surrogatepass")
    return source if inputs is None else envelope(source, inputs)


def run_once(script: str, limits: Limits, host: cgroups.Cgroups | None = None,
             cancel: threading.Event | None = None, *, inputs: RunInput | None = None) -> Outcome:
    """Run one script (with its inputs) in a fresh nsjail and say how it ended (SandboxError if
    the jail failed); setting cancel kills the jail as a timeout does."""
    with cgroups.run_cgroup(host or host_cgroups()) as run_cg, RunPipes(with_log=True) as pipes:
        assert pipes.log_w is not None, "asked for with_log"
        argv = jail_argv(policy_file(limits.tmp_mb), pipes.log_w, pipes.report_w,
                         one_off_limits(limits, run_cg),
                         "main(int(sys.argv[1]), -1, int(sys.argv[2]), int(sys.argv[3]))",
                         str(pipes.report_w), str(limits.max_files_out),
                         str(limits.max_files_out_bytes))
        stdin, stdout, stderr, report = pipes.jail_ends
        try:
            proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=stderr,
                                    pass_fds=(report, pipes.log_w), env={},
                                    start_new_session=True)
        except OSError as exc:
            raise SandboxError(f"could not start nsjail: {exc}") from exc
        pipes.close(*pipes.jail_ends, pipes.log_w)
        watch = None if "memory" in run_cg.cgroups.available else MemoryWatch(
            proc.pid, limits.memory_mb * MIB)
        raw = pump(pipes, jail_stdin(script, inputs), limits, lambda: _terminate(proc), watch,
                   cancel)
        rusage = reap(proc)
        raw.usage = measured(run_cg.usage(), rusage, watch)
    raw.exit = parse_exit(bytes(raw.log))
    return interpret(raw, limits)


def measured(kernel: cgroups.Usage, rusage: resource.struct_rusage | None,
             watch: MemoryWatch | None) -> cgroups.Usage:
    """The cgroup's accounting, completed where it is silent: CPU time from the rusage of
    the processes that were waited for, the memory peak from the watchdog's samples."""
    cpu_ns = kernel.cpu_ns
    if cpu_ns is None and rusage is not None:
        cpu_ns = round((rusage.ru_utime + rusage.ru_stime) * 1e9)
    peak = kernel.peak_memory_bytes
    if peak is None and watch is not None:
        peak = watch.peak_bytes
    return cgroups.Usage(peak, cpu_ns, kernel.oom_killed)


def parse_exit(nsjail_log: bytes) -> dict[str, int | str] | None:
    """How nsjail says the jailed process ended; None when nsjail itself failed."""
    found = EXIT_RE.search(nsjail_log)
    if found is None or b"[F]" in nsjail_log or b"Couldn't launch" in nsjail_log:
        return None
    code, signame = found.groups()
    return {"exit": int(code)} if signame is None else {"signal": signame.decode()}


def _terminate(proc: subprocess.Popen) -> None:
    """Ask nsjail to kill its jail (it then removes its cgroups); reap forces it if need be."""
    try:
        proc.send_signal(signal.SIGTERM)
    except ProcessLookupError:
        pass


def reap(proc: subprocess.Popen) -> resource.struct_rusage | None:
    """Wait for an nsjail told to stop (kill it if it has not within the grace); its rusage,
    which counts every process of the jail that was waited for. None if already reaped."""
    if proc.returncode is not None:
        return None
    pidfd = os.pidfd_open(proc.pid)
    try:
        if not select.select([pidfd], [], [], KILL_GRACE_S)[0]:
            log.error("nsjail pid %d ignored SIGTERM; killing it", proc.pid)
            proc.kill()
    finally:
        os.close(pidfd)
    _, status, rusage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return rusage
