"""Sessions: one interpreter in one jail of its own, whose state lasts from call to call.

A session is one nsjail started as a one-off jail is (the same policy: namespaces, seccomp,
uid 65534, read-only runtime, a fresh /tmp as its working directory; a cgroup of its own with
the session's memory limit and processes), running jail/session_harness.py instead of a
single script. Each call hands the harness the four pipes a run has (jail/pipes.py) over a
control socket, and is read and judged as a run is (jail/protocol.py).

A call past its time limit (or its output cap) is interrupted with SIGINT: KeyboardInterrupt
in the call's code, and the session keeps its state. If the harness has not finished the call
INTERRUPT_GRACE_S later, the session is killed (ended: timeout). A session also ends when its
memory runs out (memory_limit) or its interpreter ends (exited); Session.close ends it for
any other reason the caller gives (deleted, idle, lifetime...).
"""
import functools
import json
import logging
import math
import os
import select
import signal
import socket
import subprocess
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

from jail import cgroups
from jail.limits import MIB, Limits
from jail.nsjail import host_cgroups, jail_argv, jail_stdin, one_off_limits, parse_exit, policy_file, reap
from jail.outcome import Outcome, SandboxError, Status
from jail.paths import paths
from jail.pipes import RunPipes, pump
from jail.procfs import process_cpu_ns
from jail.protocol import interpret, ran_out_of_memory
from jail.runinput import RunInput
from jail.watchdog import MemoryWatch

log = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0
"""How long a new session's interpreter may take to say it is ready."""
INTERRUPT_GRACE_S = 2.0
"""How long a call has to stop after its KeyboardInterrupt before the session is killed."""
LIFETIME_SLACK_S = 5
"""nsjail's own time limit (a backstop) is the session's lifetime plus this."""
KEEP_FREED_MAX_MB = 32
"""The most freed heap a session's interpreter keeps for its next call (see malloc_tunables)."""


class SessionEnded(Exception):
    """The session is over: `reason` says why (timeout, memory_limit, exited, or the caller's)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the session ended: {reason}")
        self.reason = reason


class SessionBusy(Exception):
    """Another call of the same session is running: calls run one at a time."""


@dataclass(frozen=True)
class SessionUsage:
    """What a session has used so far."""

    calls: int
    cpu_ms: int | None
    peak_memory_mb: float | None


@functools.cache
def session_harness_source() -> str:
    """The session harness's code, appended to the harness's."""
    return (paths().harness.parent / "session_harness.py").read_text()


def malloc_tunables(memory_mb: int) -> str:
    """glibc's malloc settings for a session's interpreter: keep up to an eighth of its memory
    (at most KEEP_FREED_MAX_MB) of freed heap between calls, and take blocks up to that size
    from the heap, not from fresh mappings. By default glibc hands a call's freed temporaries
    back to the kernel, and the next call faults them in again: ~200 page faults, 0.5-1 ms of
    a 100 000-row groupby here. What is kept counts in the session's memory limit."""
    keep = min(KEEP_FREED_MAX_MB, memory_mb // 8) * MIB
    return f"GLIBC_TUNABLES=glibc.malloc.trim_threshold={keep}:glibc.malloc.mmap_threshold={keep}"


class Session:
    """One jailed interpreter for one session. `limits` bound the whole session (memory_mb,
    max_pids, tmp_mb, max_open_files); each call brings its own time and output limits."""

    def __init__(self, limits: Limits, lifetime_s: float, host: cgroups.Cgroups | None = None) -> None:
        self.limits, self.lifetime_s = limits, lifetime_s
        self.ended: str | None = None
        self.calls = 0
        self._cpu_ns = 0
        self._lock = threading.Lock()
        self._stack = ExitStack()
        self._interrupted_at: float | None = None
        try:
            self._start(host or host_cgroups())
        except BaseException:
            self._stack.close()
            raise

    def _start(self, host: cgroups.Cgroups) -> None:
        self.cgroup = self._stack.enter_context(cgroups.run_cgroup(host, "session"))
        self.control, jail_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._stack.callback(self.control.close)
        self._log = self._stack.enter_context(tempfile.TemporaryFile())
        whole_life = replace(self.limits, timeout_s=math.ceil(self.lifetime_s) + LIFETIME_SLACK_S)
        argv = jail_argv(policy_file(self.limits.tmp_mb), 2, jail_end.fileno(),
                         [*one_off_limits(whole_life, self.cgroup),
                          "--env", malloc_tunables(self.limits.memory_mb)],
                         session_harness_source() + "\nserve_session(int(sys.argv[1]))",
                         str(jail_end.fileno()))
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=self._log, pass_fds=(jail_end.fileno(),), env={},
                                         start_new_session=True)
        except OSError as exc:
            raise SandboxError(f"could not start nsjail: {exc}") from exc
        finally:
            jail_end.close()
        self._stack.callback(self._stop_jail)
        try:
            ready = self._receive(START_TIMEOUT_S)
        except TimeoutError:
            ready = None
        if ready != {"ready": True}:
            raise SandboxError(f"the session's interpreter did not start: {self.log_tail()}")
        self.pid = self._interpreter_pid()
        self._cpu_mark = self._cpu_now(self.cgroup.usage())
        """The session's CPU time when its last call ended (or it became ready): between calls
        its interpreter waits, so a call's CPU time is what it adds to this."""

    def _interpreter_pid(self) -> int:
        """The interpreter's pid here: nsjail's only child."""
        task = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return int(task.read_text().split()[0])
        except (OSError, IndexError, ValueError) as exc:
            raise SandboxError(f"the session's interpreter is gone: {exc!r}") from exc

    @property
    def busy(self) -> bool:
        """True while a call runs."""
        return self._lock.locked()

    def execute(self, script: str, limits: Limits, inputs: RunInput | None = None) -> Outcome:
        """Run one call in the session and say how it went, as a run's Outcome (its memory
        figures are the session's). SessionBusy while another call runs; SessionEnded when
        the session was over before the call. A call can end the session: see `ended`."""
        if not self._lock.acquire(blocking=False):
            raise SessionBusy
        try:
            if self.ended is not None:
                raise SessionEnded(self.ended)
            self.calls += 1
            call_limits = replace(limits, memory_mb=self.limits.memory_mb, max_pids=self.limits.max_pids,
                                  tmp_mb=self.limits.tmp_mb, max_open_files=self.limits.max_open_files)
            return replace(self._call(script, call_limits, inputs), jail="session",
                           enforcement=self.cgroup.cgroups.enforcement.value)
        finally:
            if self.ended is not None:
                self._stack.close()
            self._lock.release()

    def _call(self, script: str, limits: Limits, inputs: RunInput | None) -> Outcome:
        header = json.dumps({"FILES_OUT": limits.max_files_out,
                             "FILES_OUT_BYTES": limits.max_files_out_bytes}).encode()
        watch = None if "memory" in self.cgroup.cgroups.available else MemoryWatch(
            self.pid, limits.memory_mb * MIB, include_root=True)
        self._interrupted_at = None
        start = time.monotonic()
        with RunPipes() as pipes:
            try:
                socket.send_fds(self.control, [header], list(pipes.jail_ends))
            except OSError:
                self._end(self._death_reason())
                raise SessionEnded(self.ended or "exited") from None
            pipes.close(*pipes.jail_ends)
            raw = pump(pipes, jail_stdin(script, inputs or RunInput()), limits, self._interrupt, watch)
        self._finish(start + limits.timeout_s, watch is not None and raw.killed_for is Status.MEMORY_LIMIT)
        kernel = self.cgroup.usage()
        cpu_now = self._cpu_now(kernel)
        cpu = None if cpu_now is None or self._cpu_mark is None else max(0, cpu_now - self._cpu_mark)
        self._cpu_mark = cpu_now
        self._cpu_ns += cpu or 0
        peak = kernel.peak_memory_bytes if watch is None else watch.peak_bytes
        raw.usage = cgroups.Usage(peak, cpu, kernel.oom_killed)
        if self.ended is not None and not raw.report:
            raw.exit = parse_exit(self._read_log())
            if raw.exit is None and not ran_out_of_memory(raw, limits):
                raw.exit = {"signal": "SIGKILL"}
        outcome = interpret(raw, limits)
        if outcome.status is Status.MEMORY_LIMIT and self.ended is None:
            self._end("memory_limit")  # a MemoryError: the session's state may be half-built
        return outcome

    def _finish(self, deadline: float, over_memory: bool) -> None:
        """Wait for the harness to say the call is done: interrupt it at the deadline, kill the
        session INTERRUPT_GRACE_S after the interrupt (or at once past its memory, or if the
        interpreter is gone)."""
        if over_memory:
            self._end("memory_limit")
            return
        while True:
            now = time.monotonic()
            if self._interrupted_at is None and now >= deadline:
                self._interrupt()
            until = deadline if self._interrupted_at is None else self._interrupted_at + INTERRUPT_GRACE_S
            if now >= until and self._interrupted_at is not None:
                self._end("timeout")
                return
            try:
                message = self._receive(max(0.0, until - now))
            except TimeoutError:
                continue
            if message is None:
                self._end(self._death_reason())
                return
            if message == {"done": True}:
                return

    def _interrupt(self) -> None:
        """KeyboardInterrupt in the call's code (once per call)."""
        if self._interrupted_at is not None:
            return
        self._interrupted_at = time.monotonic()
        try:
            os.kill(self.pid, signal.SIGINT)
        except ProcessLookupError:
            pass

    def _receive(self, timeout_s: float) -> dict | None:
        """The harness's next message; None once it is gone; TimeoutError if it said nothing."""
        if not select.select([self.control], [], [], timeout_s)[0]:
            raise TimeoutError
        try:
            data = self.control.recv(4096)
        except OSError:
            return None
        if not data:
            return None
        try:
            message = json.loads(data)
        except ValueError:
            return None
        return message if isinstance(message, dict) else None

    def _death_reason(self) -> str:
        """Why the interpreter died by itself: its memory, else it exited."""
        self._stop_jail()
        usage = self.cgroup.usage()
        peak = usage.peak_memory_bytes
        if usage.oom_killed or (usage.oom_killed is None and peak is not None
                                and peak >= 0.9 * self.limits.memory_mb * MIB):
            return "memory_limit"
        return "exited"

    def _cpu_now(self, kernel: cgroups.Usage) -> int | None:
        """CPU time the session has used so far: its cgroup's (read in `kernel`), else its
        interpreter's."""
        return kernel.cpu_ns if kernel.cpu_ns is not None else process_cpu_ns(self.pid)

    def usage(self) -> SessionUsage:
        """Calls, CPU time and memory peak so far."""
        peak = self.cgroup.usage().peak_memory_bytes if self.ended is None else None
        return SessionUsage(self.calls, math.ceil(self._cpu_ns / 1_000_000),
                            None if peak is None else math.ceil(peak * 10 / MIB) / 10)

    def _end(self, reason: str) -> None:
        if self.ended is None:
            self.ended = reason
        self._stop_jail()

    def _stop_jail(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        reap(self.proc)

    def close(self, reason: str) -> None:
        """End the session (if still open) for `reason`: kill its jail and remove its cgroup
        (at once, or when the call running now comes back)."""
        if self.ended is None:
            self.ended = reason
        if self._lock.acquire(blocking=False):
            try:
                self._stack.close()
            finally:
                self._lock.release()
        elif self.proc.poll() is None:
            self.proc.terminate()

    def _read_log(self) -> bytes:
        self._log.seek(0)
        return self._log.read()

    def log_tail(self) -> str:
        """The end of nsjail's own output, for diagnosis."""
        return self._read_log()[-2000:].decode("utf-8", "replace")
