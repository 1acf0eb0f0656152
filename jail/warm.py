"""Warm jails: nsjails that already imported numpy and pandas, each forking a sealed child per run.

A WarmJail is one nsjail running the zygote (jail/zygote.py). A WarmPool keeps `size` of
them, refilled in the background; when none is free the caller falls back to a one-off
jail, never to a weaker sandbox. A jail whose run was killed (time, output, memory) is
discarded, and every jail is recycled after MAX_RUNS runs.

How a run is bounded depends on the host (jail/cgroups.py):
- cgroup v2: each sealed child is moved into a cgroup of its own as soon as it says it is
  ready, and that cgroup gets the run's limits before the run is handed to it; the
  kernel's accounting there is the run's usage.
- cgroup v1: the jail's own cgroups are reset before every run to what is in use now
  plus the run's limits.
- neither: RLIMIT_AS per process (the zygote's address space, which the child starts as
  a copy of, plus the run's memory_mb) and the watchdog over the child's process tree.
"""
import collections
import dataclasses
import functools
import itertools
import json
import logging
import os
import queue
import resource
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from jail import cgroups
from jail.limits import MIB, Limits
from jail.nsjail import host_cgroups, jail_argv, jail_stdin, policy_file, reap, run_once
from jail.outcome import Outcome
from jail.paths import paths
from jail.pipes import KILL_GRACE_S, RunPipes, pump
from jail.procfs import anon_bytes, process_cpu_ns
from jail.protocol import interpret, ran_out_of_memory
from jail.runinput import RunInput
from jail.watchdog import MemoryWatch

log = logging.getLogger(__name__)

MAX_RUNS = 5000
"""Runs before a warm jail is replaced by a fresh one."""
START_TIMEOUT_S = 300.0
"""How long a new warm jail may take to import and warm up numpy and pandas: about a second
here, but minutes on a slow host while the service starts (the all-in-one container starts four
at once beside its Python processes' own imports: 60 s was not enough in the cgroup v2 VM tier,
qemu without KVM, and a jail given up on is started again from nothing). Only a zygote that
hangs waits this long; runs meanwhile take one-off jails."""
READY_TIMEOUT_S = 5.0
"""How long a run waits for its sealed child to be forked."""
WARM_LIMITS = ["--time_limit", "0", "--rlimit_cpu", "max", "--rlimit_fsize", "max",
               "--rlimit_nofile", "1024", "--rlimit_nproc", "max", "--rlimit_as", "max"]
"""The zygote's own limits; each run's child lowers them to the run's."""
CGROUP_CEILING = (64 * 1024 * MIB, 4096)
"""nsjail's own cgroup caps for a warm jail; the run's real caps are set on the parent."""


class WarmJailBroken(Exception):
    """The warm jail failed, not the script: the run goes to a one-off jail instead.

    The script may have started before the jail died; running it again is safe because a
    run leaves nothing behind and reaches nothing outside its jail."""


@functools.cache
def zygote_source() -> str:
    """The zygote's code, appended to the harness's."""
    return (paths().harness.parent / "zygote.py").read_text()


@dataclass
class SealedChild:
    """A child of the zygote waiting for a run: its pid here, the socket the run goes to,
    and (cgroup v2) the cgroup of its own it was moved into."""

    pid: int
    sock: socket.socket
    cgroup: cgroups.V2Cgroup | None
    cpu_ns: int | None = None
    """Its CPU time when the run was killed (no cgroup keeps it afterwards)."""


class WarmJail:
    """One nsjail running the zygote; one run at a time."""

    def __init__(self, tmp_mb: int, host: cgroups.Cgroups) -> None:
        self.tmp_mb = tmp_mb
        self._stack = ExitStack()
        self.cgroup = self._stack.enter_context(cgroups.run_cgroup(host, "warm"))
        self.control, jail_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._log = self._stack.enter_context(tempfile.TemporaryFile())
        argv = jail_argv(policy_file(1, warm=True), 2, jail_end.fileno(),
                         WARM_LIMITS + self.cgroup.bound(*CGROUP_CEILING),
                         zygote_source(), str(jail_end.fileno()), str(tmp_mb * MIB))
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=self._log, pass_fds=(jail_end.fileno(),), env={},
                                         start_new_session=True)
        finally:
            jail_end.close()
        self.runs, self.unreaped, self.alive = 0, 0, True
        self._sealed: collections.deque[SealedChild] = collections.deque()
        self._spent: list[cgroups.V2Cgroup] = []
        self._zygote_pid: int | None = None

    def wait_ready(self, timeout_s: float) -> None:
        """Wait until a sealed child is waiting for the next run."""
        while not self._sealed:
            if self._receive(timeout_s) is not None:
                raise WarmJailBroken("a child ended without a run")

    def run(self, script: str, limits: Limits, cancel: threading.Event | None = None,
            inputs: RunInput | None = None) -> Outcome:
        """Run one script (with its inputs) in this jail's next sealed child (killed, with the
        jail, once cancel is set)."""
        while self.unreaped:  # the last run's child must be gone before this run's limits are set
            if self._receive(READY_TIMEOUT_S) is not None:
                raise WarmJailBroken("a child ended without a run")
        self._remove_spent()
        self.wait_ready(READY_TIMEOUT_S)
        child = self._sealed.popleft()
        self.runs += 1
        try:
            return self._run_in(child, jail_stdin(script, inputs), limits, cancel)
        finally:
            child.sock.close()  # also where the run failed before its usage was read

    def _run_in(self, child: SealedChild, source: bytes, limits: Limits,
                cancel: threading.Event | None) -> Outcome:
        baseline = 0
        try:
            if child.cgroup is not None:
                self._spent.append(child.cgroup)
                child.cgroup.limit(limits.memory_mb * MIB, limits.max_pids)
            else:
                baseline = self.cgroup.limit_run(limits.memory_mb * MIB, limits.max_pids)
        except OSError as exc:
            raise WarmJailBroken(f"could not set the run's cgroup limits: {exc}") from exc
        watch = None if "memory" in self.cgroup.cgroups.available else MemoryWatch(
            child.pid, limits.memory_mb * MIB, self._zygote_anon_bytes(), include_root=True)
        header = json.dumps({"RLIMIT_CPU": limits.cpu_s, "RLIMIT_AS": self._address_space(limits),
                             "RLIMIT_NPROC": limits.max_pids, "RLIMIT_NOFILE": limits.max_open_files,
                             "RLIMIT_FSIZE": limits.tmp_mb * MIB, "FILES_OUT": limits.max_files_out,
                             "FILES_OUT_BYTES": limits.max_files_out_bytes}).encode()
        with RunPipes() as pipes:
            try:
                socket.send_fds(child.sock, [header], list(pipes.jail_ends))
            except OSError as exc:
                raise WarmJailBroken(f"the sealed child is gone: {exc}") from exc
            pipes.close(*pipes.jail_ends)
            raw = pump(pipes, source, limits, lambda: self._stop(child), watch, cancel)
        raw.usage = self._usage(child, baseline, watch)
        child.sock.close()  # the held child may end now, while its report is read
        if raw.killed_for is None and raw.report:
            self.unreaped += 1  # the report says how it ended; the zygote's word can come later
        elif raw.killed_for is None:
            ended = self._ended()
            raw.exit = None if ended is None else {k: v for k, v in ended.items() if k != "cpu_ns"}
            if raw.usage.cpu_ns is None and ended is not None:
                raw.usage = dataclasses.replace(raw.usage, cpu_ns=ended.get("cpu_ns"))
            if raw.exit is None and not ran_out_of_memory(raw, limits):
                raise WarmJailBroken("the warm jail died under the run")
        return interpret(raw, limits)

    def _stop(self, child: SealedChild) -> None:
        """Kill the run (and this whole jail), noting the child's CPU time first where no
        cgroup keeps it."""
        if child.cgroup is None:
            child.cpu_ns = process_cpu_ns(child.pid)
        self.kill()

    def _usage(self, child: SealedChild, baseline: int, watch: MemoryWatch | None) -> cgroups.Usage:
        """The run's own cgroup's accounting (v2); else this jail's memory peak past the
        baseline (v1) or the watchdog's (none), and the held child's CPU time from /proc."""
        if child.cgroup is not None:
            return child.cgroup.usage()
        peak = self.cgroup.usage().peak_memory_bytes
        if peak is not None:
            peak = max(0, peak - baseline)
        elif watch is not None:
            peak = watch.peak_bytes
        cpu_ns = process_cpu_ns(child.pid) if child.cpu_ns is None else child.cpu_ns
        return cgroups.Usage(peak_memory_bytes=peak, cpu_ns=cpu_ns)

    def _address_space(self, limits: Limits) -> int:
        """RLIMIT_AS for the run's child: unlimited under a memory cgroup, else the zygote's
        address space (the child starts as its copy) plus the run's memory."""
        if "memory" in self.cgroup.cgroups.available:
            return resource.RLIM_INFINITY
        try:
            status = Path(f"/proc/{self._zygote()}/status").read_text()
            size_kb = int(next(line for line in status.splitlines() if line.startswith("VmSize:")).split()[1])
        except (OSError, StopIteration, IndexError, ValueError) as exc:  # killed (the OOM killer picks jails)
            raise WarmJailBroken(f"the zygote is gone: {exc!r}") from exc
        return size_kb * 1024 + limits.memory_mb * MIB

    def _zygote(self) -> int:
        """The zygote's pid here: nsjail's only child (WarmJailBroken once it is gone)."""
        if self._zygote_pid is None:
            task = f"/proc/{self.proc.pid}/task/{self.proc.pid}/children"
            try:
                self._zygote_pid = int(Path(task).read_text().split()[0])
            except (OSError, IndexError, ValueError) as exc:
                raise WarmJailBroken(f"the zygote is gone: {exc!r}") from exc
        return self._zygote_pid

    def _zygote_anon_bytes(self) -> int:
        """What a sealed child shares with the zygote: the watchdog does not count it as the run's."""
        return anon_bytes(self._zygote())

    def _ended(self) -> dict | None:
        """The zygote's word on how the run ended; None (and the jail killed) if it has none."""
        try:
            while True:
                message = self._receive(KILL_GRACE_S)
                if message is not None:
                    return message
        except WarmJailBroken:
            self.kill()
            return None

    def _receive(self, timeout_s: float) -> dict | None:
        """The next message from the jail: the current run's end is returned; a sealed child
        is queued, and the end of an earlier run that had already reported is counted."""
        self.control.settimeout(timeout_s)
        try:
            data, fds, _, _ = socket.recv_fds(self.control, 4096, 1)
        except OSError as exc:
            raise WarmJailBroken(f"no word from the zygote: {exc}") from exc
        if not data:
            raise WarmJailBroken(f"the zygote is gone: {self.log_tail()}")
        message = json.loads(data)
        if message == {"ready": True} and len(fds) == 1:
            self._sealed.append(self._adopt(socket.socket(fileno=fds[0])))
            return None
        for fd in fds:
            os.close(fd)
        if self.unreaped and "broken" not in message:
            self.unreaped -= 1
            return None
        if "broken" in message:
            self.kill()
            raise WarmJailBroken(f"a child could not seal itself: {message['broken']}")
        return message

    def _adopt(self, sock: socket.socket) -> SealedChild:
        """A newly sealed child: its pid, and on cgroup v2 a cgroup of its own, before any run."""
        pid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
        v2 = self.cgroup.v2
        if v2 is None:
            return SealedChild(pid, sock, None)
        cgroup = cgroups.V2Cgroup(v2.path / f"run-{pid}", v2.controllers)
        try:
            cgroup.create()
            cgroup.move(pid)
        except OSError as exc:
            sock.close()
            self.kill()
            raise WarmJailBroken(f"could not give a sealed child its cgroup: {exc}") from exc
        return SealedChild(pid, sock, cgroup)

    def _remove_spent(self) -> None:
        """Remove the cgroups of runs whose child is gone."""
        while self._spent:
            self._spent.pop().remove()

    @property
    def reusable(self) -> bool:
        """Whether this jail may serve another run."""
        return self.alive and self.runs < MAX_RUNS and self.proc.poll() is None

    def kill(self) -> None:
        """Stop the whole warm jail (nsjail kills every process in it)."""
        self.alive = False
        if self.proc.poll() is None:
            self.proc.terminate()

    def close(self) -> None:
        """Kill the jail, wait for it, and remove its cgroups."""
        self.kill()
        reap(self.proc)
        self.control.close()
        for child in self._sealed:
            child.sock.close()
        self._stack.close()

    def log_tail(self) -> str:
        """The end of nsjail's and the zygote's own output, for diagnosis."""
        self._log.seek(0)
        return self._log.read()[-2000:].decode("utf-8", "replace")


class WarmPool:
    """`size` warm jails whose /tmp holds tmp_mb, refilled in the background."""

    def __init__(self, size: int, tmp_mb: int, host: cgroups.Cgroups | None = None,
                 on_change: Callable[[int, int], None] | None = None) -> None:
        self.size, self.tmp_mb = size, tmp_mb
        self._on_change = on_change
        self._host = host or host_cgroups()
        self._idle: queue.SimpleQueue[WarmJail] = queue.SimpleQueue()
        self._wanted = threading.Semaphore(size)
        self._stopped = threading.Event()
        self._failures = itertools.count()
        self._filler = threading.Thread(target=self._fill, name="warm-jails", daemon=True)
        self._filler.start()

    @property
    def idle(self) -> int:
        """Warm jails ready for a run now."""
        return self._idle.qsize()

    def run(self, script: str, limits: Limits, wait_s: float = 0.0,
            cancel: threading.Event | None = None, inputs: RunInput | None = None) -> Outcome | None:
        """Run in a free warm jail (waiting up to wait_s for one); None when none was free."""
        if limits.tmp_mb != self.tmp_mb:
            return None
        try:
            jail = self._idle.get(timeout=wait_s) if wait_s else self._idle.get_nowait()
        except queue.Empty:
            return None
        self._changed()
        try:
            return jail.run(script, limits, cancel, inputs)
        except WarmJailBroken as exc:
            log.error("warm jail broken, running in a one-off jail instead: %s", exc)
            jail.kill()
            return dataclasses.replace(run_once(script, limits, cancel=cancel, inputs=inputs),
                                       jail="one-off")
        finally:
            self._give_back(jail)

    def _give_back(self, jail: WarmJail) -> None:
        if jail.reusable and not self._stopped.is_set():
            self._idle.put(jail)
            self._changed()
            return
        jail.close()
        self._wanted.release()

    def _fill(self) -> None:
        """Start a warm jail whenever the pool is short of one."""
        while True:
            self._wanted.acquire()
            if self._stopped.is_set():
                return
            jail = None
            try:
                jail = WarmJail(self.tmp_mb, self._host)
                jail.wait_ready(START_TIMEOUT_S)
            except (OSError, WarmJailBroken) as exc:
                failures = next(self._failures) + 1
                log.error("a warm jail did not start (%d so far): %s %s", failures, exc,
                          jail.log_tail() if jail else "")
                if jail:
                    jail.close()
                self._wanted.release()
                time.sleep(min(30.0, 0.5 * failures))
                continue
            self._idle.put(jail)
            self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.idle, self.size)

    def close(self) -> None:
        """Stop refilling and kill every idle jail (busy ones are closed when their run ends)."""
        self._stopped.set()
        self._wanted.release()
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                self._changed()
                return
