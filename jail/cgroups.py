"""Which cgroup controllers this host lets the jail use, and a private cgroup per run.

nsjail needs each controller's parent cgroup to exist. Each run gets its own parent
(`NSJAIL/<run id>`) so that its peak memory can be read afterwards and whatever nsjail
leaves behind (when it is killed) is removed. Hosts with cgroup v2 or none (Cloud Run,
most containers) fall back to rlimits: the caller logs that and reports it in /health.
"""
import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CONTROLLERS = ("memory", "pids", "cpu")
PARENT = "NSJAIL"


@dataclass(frozen=True)
class Cgroups:
    """The usable cgroup v1 controllers, by name, and why the others are not."""

    root: Path
    available: frozenset[str]
    missing_reason: str = ""

    @property
    def complete(self) -> bool:
        """True when memory, pids and cpu are all enforced by cgroups."""
        return self.available == frozenset(CONTROLLERS)


def detect(root: Path = Path("/sys/fs/cgroup")) -> Cgroups:
    """Find the cgroup v1 controllers whose NSJAIL parent exists or can be made."""
    available, reasons = set(), []
    for name in CONTROLLERS:
        parent = root / name / PARENT
        try:
            if not (root / name / "cgroup.procs").exists():
                raise OSError(f"no cgroup v1 '{name}' hierarchy at {root / name}")
            parent.mkdir(exist_ok=True)
            probe = parent / f"probe-{os.getpid()}"
            probe.mkdir()
            probe.rmdir()
            available.add(name)
        except OSError as exc:
            reasons.append(f"{name}: {exc}")
    return Cgroups(root, frozenset(available), "; ".join(reasons))


@dataclass
class RunCgroup:
    """One run's parent cgroups: the dirs nsjail nests its own cgroup under."""

    cgroups: Cgroups
    name: str

    def path(self, controller: str) -> Path:
        """This run's parent dir for one controller."""
        return self.cgroups.root / controller / PARENT / self.name

    def peak_memory_bytes(self) -> int | None:
        """The most memory the run's processes held at once, where the memory cgroup is used."""
        if "memory" not in self.cgroups.available:
            return None
        try:
            return int((self.path("memory") / "memory.max_usage_in_bytes").read_text())
        except (OSError, ValueError):
            return None

    def limit_run(self, memory_bytes: int, max_pids: int) -> int:
        """Cap what is in this cgroup now plus memory_bytes and max_pids more (for a warm jail's
        next run); reset the memory peak. Returns the memory in use now."""
        if "pids" in self.cgroups.available:
            tasks = int((self.path("pids") / "pids.current").read_text())
            (self.path("pids") / "pids.max").write_text(str(tasks + max_pids))
        if "memory" not in self.cgroups.available:
            return 0
        memory = self.path("memory")
        in_use = int((memory / "memory.usage_in_bytes").read_text())
        limit = str(in_use + memory_bytes)
        swap = memory / "memory.memsw.limit_in_bytes"
        # memory+swap may never be below memory: raise it first, lower it last.
        order = ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes")
        if swap.exists() and int(swap.read_text()) < int(limit):
            order = order[::-1]
        for name in order:
            if (memory / name).exists():
                (memory / name).write_text(limit)
        (memory / "memory.max_usage_in_bytes").write_text("0")
        return in_use

    def remove(self) -> None:
        """Remove this run's cgroups, including any that nsjail left when it was killed."""
        for controller in self.cgroups.available:
            base = self.path(controller)
            for child in base.glob("*/"):
                _rmdir(child)
            _rmdir(base)


def _rmdir(path: Path) -> None:
    try:
        path.rmdir()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove cgroup %s: %s", path, exc)


@contextmanager
def run_cgroup(cgroups: Cgroups) -> Iterator[RunCgroup]:
    """Create this run's parent cgroups; remove them afterwards."""
    run = RunCgroup(cgroups, f"run-{uuid.uuid4().hex}")
    try:
        for controller in cgroups.available:
            run.path(controller).mkdir()
        yield run
    finally:
        run.remove()
