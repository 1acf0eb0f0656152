"""Admission by memory: a run starts only while its memory limit fits beside those of the runs
in flight and what the service itself holds, in the memory this service may use.

The memory is one container's (or host's), shared by every process of it that runs jails: in
the one-container image gunicorn's worker and each RQ worker. They share one ledger, a small
file on /dev/shm under flock(2): each process registers what it holds standing (itself and its
warm jails, estimated from measured sizes) and reserves each run's limit before the run starts.
Entries of processes that have died are dropped whenever the ledger is read, so a killed
process gives its memory back.

    runs fit  while  standing + sum(run reservations) + this run's limit <= total - base

`total` is the smallest memory limit on this process's cgroup chain (memory.max on v2,
memory.limit_in_bytes on v1), or the host's MemTotal, or PYSANDBOX_MEMORY_MB. A run reserves
its limit; where only the watchdog bounds it, its limit plus the watchdog's documented slack.

Hand-rolled: no library keeps a budget shared by unrelated processes that also frees what a
dead process held (a SysV semaphore with SEM_UNDO comes close, but caps a count at 32767 and
needs a C extension); this is a flock'ed text file of a few lines.
"""
import fcntl
import itertools
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jail.limits import MIB
from jail.nsjail import host_cgroups
from jail.watchdog import SLACK_MB

log = logging.getLogger(__name__)

BASE_MB = 64
"""What the parts that run no jail hold: the supervisor, nginx, gunicorn's master and an idle
embedded redis (measured 2026-12-03: 9 + 5 + 41 + 3 MB anonymous memory)."""
PROCESS_MB = 44
"""One process that runs jails (gunicorn's worker, an RQ worker): 40-43 MB measured."""
WARM_JAIL_MB = 48
"""One warm jail: its zygote with numpy and pandas imported, and its sealed child (47 MB
measured per jail: six jails held 280 MB)."""
UNLIMITED = 1 << 62
"""What cgroups write for "no limit" is larger than any memory; anything past this is none."""
STANDING = "standing"
POLL_S = 0.05
"""How often a run waiting for memory looks again."""
ADMIT_WAIT_S = 60
"""How long a queued job's worker waits for the job's memory to be free before the job ends
as memory_unavailable (worker/jobs.py); RQ's timeout leaves room for it (api/jobs.py)."""


@dataclass(frozen=True)
class Budget:
    """The memory runs may take: total minus what the service's other parts hold."""

    total_bytes: int
    source: str
    """Where total came from: "memory.max of /…", "MemTotal", "PYSANDBOX_MEMORY_MB"."""
    base_bytes: int = BASE_MB * MIB

    @property
    def bytes(self) -> int:
        """What the processes that run jails (standing) and their runs may hold together."""
        return max(0, self.total_bytes - self.base_bytes)


def standing_bytes(warm_jails: int) -> int:
    """What one process that runs jails holds with `warm_jails` warm jails, runs aside."""
    return (PROCESS_MB + warm_jails * WARM_JAIL_MB) * MIB


def memory_total(cgroup_root: Path = Path("/sys/fs/cgroup"), meminfo: Path = Path("/proc/meminfo"),
                 proc_cgroup: Path = Path("/proc/self/cgroup")) -> tuple[int, str]:
    """The memory this process may use, and where that figure comes from: the tightest limit
    on its cgroup's chain up to the root this host shows it (its container's own), else the
    host's memory."""
    found = [(_meminfo_total(meminfo), "MemTotal")]
    for path in _cgroup_chain(cgroup_root, proc_cgroup):
        for name in ("memory.max", "memory.limit_in_bytes"):
            value = _read_limit(path / name)
            if value is not None:
                found.append((value, f"{name} of {path}"))
    return min(found)


def _cgroup_chain(root: Path, proc_cgroup: Path) -> list[Path]:
    """This process's memory cgroup and its parents, as far as the mount at root shows them
    (v2: the unified hierarchy; v1: the memory controller's). A container sees its own cgroup
    at the mount's root, so paths the mount does not have are skipped."""
    unified = (root / "cgroup.controllers").exists()
    base, relative = (root if unified else root / "memory"), ""
    try:
        for line in proc_cgroup.read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if (controllers == "") if unified else ("memory" in controllers.split(",")):
                relative = path
    except (OSError, ValueError):
        pass
    chain, current = [], base / relative.lstrip("/")
    while current != base and base in current.parents:
        if current.is_dir():
            chain.append(current)
        current = current.parent
    return [*chain, base]


def _read_limit(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max" or not text.isdigit() or int(text) >= UNLIMITED:
        return None
    return int(text)


def _meminfo_total(meminfo: Path) -> int:
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise OSError(f"no MemTotal in {meminfo}")


@dataclass(frozen=True)
class Held:
    """The ledger's sums: what processes hold standing and what runs in flight reserved."""

    standing_bytes: int
    runs_bytes: int
    runs: int


class MemoryLedger:
    """The memory held by the processes that run jails on this budget, and by their runs."""

    def __init__(self, path: Path, budget: Budget, slack_bytes: int = 0, largest_mb: int = 0) -> None:
        """slack_bytes: what a run may hold past its limit here (the watchdog's, without cgroups);
        largest_mb: the largest memory limit a run may ask for."""
        self.path, self.budget, self.slack_bytes = path, budget, slack_bytes
        self.largest_mb = largest_mb
        self._thread_lock = threading.Lock()
        self._fd: int | None = None
        self._fd_pid = 0
        self._serial = itertools.count()

    def cost(self, memory_mb: int) -> int:
        """What a run with this memory limit reserves."""
        return memory_mb * MIB + self.slack_bytes

    def room(self, held: Held | None = None) -> int:
        """The bytes runs may reserve when none is in flight: the budget less what is held standing."""
        return self.budget.bytes - (held or self.held()).standing_bytes

    def never_fits(self, nbytes: int) -> bool:
        """True when nbytes cannot fit even with no run in flight."""
        return nbytes > self.room()

    def reserve(self, nbytes: int, wait_s: float, stop: threading.Event | None = None) -> str | None:
        """Reserve nbytes, waiting up to wait_s (polling: other processes free memory without
        telling this one) or until stop is set; a token, or None."""
        deadline = time.monotonic() + wait_s
        while (token := self.try_reserve(nbytes)) is None:
            left = deadline - time.monotonic()
            if left <= 0 or (stop is not None and stop.is_set()):
                return None
            time.sleep(min(POLL_S, left))
        return token

    def stand(self, nbytes: int) -> None:
        """Record (or update) what this process holds standing."""
        with self._locked(prune=True) as entries:
            entries[:] = [e for e in entries if not (e[0] == os.getpid() and e[1] == STANDING)]
            entries.append((os.getpid(), STANDING, nbytes))

    def try_reserve(self, nbytes: int) -> str | None:
        """Reserve nbytes for a run if they fit now; a token for release(), else None. Dead
        processes' entries are dropped only when it would not fit (a /proc check each)."""
        for prune in (False, True):
            with self._locked(prune) as entries:
                if sum(e[2] for e in entries) + nbytes <= self.budget.bytes:
                    token = f"{os.getpid()}.{next(self._serial)}"
                    entries.append((os.getpid(), token, nbytes))
                    return token
        return None

    def release(self, token: str) -> None:
        """Give a run's reservation back."""
        with self._locked() as entries:
            entries[:] = [e for e in entries if e[1] != token]

    def held(self) -> Held:
        """What is held now."""
        with self._locked(prune=True) as entries:
            runs = [e[2] for e in entries if e[1] != STANDING]
            return Held(sum(e[2] for e in entries if e[1] == STANDING), sum(runs), len(runs))

    def health(self) -> dict[str, Any]:
        """For /health: the budget, what is held, and a warning when not even one run at the
        largest limit fits beside what the service holds."""
        held, largest = self.held(), self.cost(self.largest_mb)
        body: dict[str, Any] = {
            "total_bytes": self.budget.total_bytes, "source": self.budget.source,
            "base_bytes": self.budget.base_bytes, "standing_bytes": held.standing_bytes,
            "runs_bytes": held.runs_bytes, "runs": held.runs,
            "free_bytes": max(0, self.room(held) - held.runs_bytes),
            "largest_run_bytes": largest}
        room = self.room(held)
        if largest > room:
            body["warning"] = (f"a run at the largest memory limit ({largest // MIB} MB) cannot fit: "
                               f"{room // MIB} MB are left for runs of {self.budget.total_bytes // MIB} MB "
                               "once the service holds its share; such runs are refused "
                               "(memory_unavailable)")
        return body

    def describe(self, default_mb: int) -> str:
        """The sum it budgets, in a line for the start-up log."""
        held = self.held()
        room = self.room(held)
        return (f"memory for runs: {self.budget.total_bytes // MIB} MB ({self.budget.source}) - "
                f"{self.budget.base_bytes // MIB} MB base - {held.standing_bytes // MIB} MB held by "
                f"the processes that run jails and their warm jails = {room // MIB} MB: "
                f"{max(0, room) // self.cost(default_mb)} runs at once at the default "
                f"{default_mb} MB" + (f" (+{self.slack_bytes // MIB} MB watchdog slack each)"
                                      if self.slack_bytes else ""))

    @contextmanager
    def _locked(self, prune: bool = False) -> Iterator[list[tuple[int, str, int]]]:
        """The entries (with prune, only those of live processes), under this process's lock
        and the file's; what the caller leaves in the list is written back."""
        with self._thread_lock:  # flock(2) does not exclude threads sharing the descriptor
            if self._fd is None or self._fd_pid != os.getpid():
                self._fd, self._fd_pid = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600), os.getpid()
            fd = self._fd
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                entries = _parse(os.pread(fd, 1 << 20, 0))
                if prune:
                    entries = [entry for entry in entries if _alive(entry[0])]
                yield entries
                data = "".join(f"{pid} {token} {n}\n" for pid, token, n in entries).encode()
                os.pwrite(fd, data, 0)
                os.ftruncate(fd, len(data))
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)


def _parse(data: bytes) -> list[tuple[int, str, int]]:
    entries = []
    for line in data.decode().splitlines():
        try:
            pid, token, nbytes = line.split()
            entries.append((int(pid), token, int(nbytes)))
        except ValueError:
            log.warning("memory ledger: dropped a malformed line %r", line)
    return entries


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another uid
        pass
    return True


def open_ledger(path: Path, memory_mb: int, warm_jails: int, default_mb: int,
                largest_mb: int) -> MemoryLedger:
    """This process's ledger (the budget from memory_mb, 0 to detect it), with what this
    process holds standing (itself and warm_jails warm jails) registered; logs the sum it
    budgets, and a warning when a run at largest_mb cannot fit."""
    total, source = (memory_mb * MIB, "PYSANDBOX_MEMORY_MB") if memory_mb else memory_total()
    slack = 0 if "memory" in host_cgroups().available else SLACK_MB * MIB
    ledger = MemoryLedger(path, Budget(total, source), slack, largest_mb)
    ledger.stand(standing_bytes(warm_jails))
    log.info(ledger.describe(default_mb))
    warning = ledger.health().get("warning")
    if warning:
        log.warning(warning)
    return ledger
