"""Which cgroups this host lets the jail use, and a cgroup of its own for every run.

cgroup v2 (the unified hierarchy of Debian >= 11, Ubuntu >= 21.10, Docker Desktop, most
Kubernetes nodes): one directory, NSJAIL/, whose subtree has memory, pids and cpu enabled
(docker/entrypoint.sh prepares it inside a container). A one-off run gets NSJAIL/run-<id>
with the run's limits, and nsjail puts the jail in a child of it. A warm jail gets
NSJAIL/warm-<id>, with its zygote in nsjail's child and every sealed child moved into a
cgroup of its own there before it can take a run (jail/warm.py). The kernel's own word
(memory.events oom_kill, memory.peak, cpu.stat) says how each run went.

cgroup v1: one NSJAIL/<run> parent per controller; nsjail sets the limits on its child.

Without CAP_SYS_ADMIN on a cgroup v2 host (Docker's default capabilities, Cloud Run), the
container's cgroup2 mount is read-only; docker/entrypoint.sh then starts a keeper in a user
namespace with a cgroup namespace of its own, which mounts a writable cgroup2 of the
container's cgroup (the kernel lets a user namespace that owns a cgroup namespace manage the
cgroups below its root; rootless Podman gets its cgroups the same way). The service reaches
that mount through /proc/<keeper>/root (jail/settings.py), and every run is bounded exactly as
above.

On cgroup v1 hosts the keeper mounts the container's memory, pids and cpu hierarchies the
same way (kernels that allow it: 6.x does), and runs are bounded as on v1 above.

Neither (no user namespaces, or a kernel that refuses those mounts): rlimits, plus
jail/watchdog.py over each run's processes. The caller logs that and reports it in /health.
"""
import logging
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path

log = logging.getLogger(__name__)

CONTROLLERS = ("memory", "pids", "cpu")
PARENT = "NSJAIL"
CPU_PERIOD_US = 100_000
"""cpu.max's period; the quota is the same, so a run gets one core at most."""
KILL_WAIT_S = 1.0
"""How long removing a cgroup waits for the processes cgroup.kill ended to go."""
STALE_AFTER_S = 600.0
"""An empty run cgroup this old was left by a process that was killed before it could remove
it (a run lasts at most its time limit); sweep_stale() removes it."""


class Enforcement(str, Enum):
    """What bounds a run's memory, processes and CPU on this host."""

    CGROUP_V2 = "cgroup v2"
    CGROUP_V2_USERNS = "cgroup v2 (user namespace)"
    CGROUP_V1 = "cgroup v1"
    CGROUP_V1_USERNS = "cgroup v1 (user namespace)"
    RLIMITS = "rlimits + watchdog"


@dataclass(frozen=True)
class Usage:
    """What a run used, in the kernel's own words; None where this host cannot say."""

    peak_memory_bytes: int | None = None
    cpu_ns: int | None = None
    oom_killed: bool | None = None
    """True when the kernel's OOM killer ended a process of the run (cgroup v2 only)."""


@dataclass(frozen=True)
class Cgroups:
    """The usable controllers, by name, in which hierarchy, and why the others are not."""

    root: Path
    available: frozenset[str]
    missing_reason: str = ""
    version: int = 1
    userns: bool = False
    """Reached through the keeper's user namespace (docker/entrypoint.sh), not a remount."""

    @property
    def complete(self) -> bool:
        """True when memory, pids and cpu are all enforced by cgroups."""
        return self.available == frozenset(CONTROLLERS)

    @property
    def enforcement(self) -> Enforcement:
        """What bounds a run's memory here."""
        if "memory" not in self.available:
            return Enforcement.RLIMITS
        if self.version == 1:
            return Enforcement.CGROUP_V1_USERNS if self.userns else Enforcement.CGROUP_V1
        return Enforcement.CGROUP_V2_USERNS if self.userns else Enforcement.CGROUP_V2


def detect(root: Path = Path("/sys/fs/cgroup"), userns: bool = False) -> Cgroups:
    """The controllers of the hierarchy mounted at root (v2 if unified, else v1); userns says
    that root is the keeper's mount."""
    found = _detect_v2(root) if (root / "cgroup.controllers").exists() else _detect_v1(root)
    return replace(found, userns=userns)


def _detect_v1(root: Path) -> Cgroups:
    """The cgroup v1 controllers whose NSJAIL parent exists or can be made."""
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
    return Cgroups(root, frozenset(available), "; ".join(reasons), version=1)


def _detect_v2(root: Path) -> Cgroups:
    """The controllers NSJAIL/ hands to its children, enabling what this process may."""
    parent = root / PARENT
    try:
        parent.mkdir(exist_ok=True)
        for name in CONTROLLERS:
            if name not in _enabled(parent):
                _enable(root, name)  # usually done by docker/entrypoint.sh already
                _enable(parent, name)
        available = _enabled(parent) & set(CONTROLLERS)
        probe = V2Cgroup(parent / f"probe-{os.getpid()}", frozenset(available))
        probe.create()
        probe.limit(64 * 1024 * 1024, 1)
        probe.remove()
    except OSError as exc:
        return Cgroups(root, frozenset(), f"cgroup v2 at {root} is not usable: {exc}", version=2)
    missing = sorted(set(CONTROLLERS) - available)
    reason = f"cgroup v2: {', '.join(missing)} not delegated to {parent}" if missing else ""
    return Cgroups(root, frozenset(available), reason, version=2)


def parents(cgroups: Cgroups) -> list[Path]:
    """The NSJAIL/ directories runs are made in: one on v2, one per controller on v1."""
    if cgroups.version == 2:
        return [cgroups.root / PARENT] if cgroups.available else []
    return [cgroups.root / name / PARENT for name in cgroups.available]


def sweep_stale(cgroups: Cgroups) -> int:
    """Remove run and warm-jail cgroups that hold no process and are older than STALE_AFTER_S:
    what processes killed mid-run left (others' live cgroups are populated or young).
    Returns how many were removed."""
    removed, now = 0, time.time()
    for parent in parents(cgroups):
        for run in parent.glob("*-*/"):
            try:
                if now - run.stat().st_mtime < STALE_AFTER_S or _populated(run):
                    continue
                for child in run.glob("*/"):
                    child.rmdir()
                run.rmdir()
                removed += 1
            except OSError:
                continue  # in use after all, or already gone
    return removed


def _populated(cgroup: Path) -> bool:
    """Whether any process is in the cgroup or below it."""
    events = _read_key(cgroup / "cgroup.events", "populated")
    if events is not None:
        return events > 0
    return any((path / "cgroup.procs").read_text().strip()
               for path in (cgroup, *cgroup.glob("*/")))


def _enabled(cgroup: Path) -> set[str]:
    return set((cgroup / "cgroup.subtree_control").read_text().split())


def _enable(cgroup: Path, name: str) -> None:
    try:
        (cgroup / "cgroup.subtree_control").write_text(f"+{name}")
    except OSError as exc:
        log.debug("could not enable %s in %s: %s", name, cgroup, exc)


def _read(path: str | Path) -> bytes:
    """A control file's content (os-level: per-run reads and writes go through these, and
    pathlib's read_text/write_text cost several times the syscalls themselves)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def _write(path: str | Path, value: object) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)


def _read_key(path: str | Path, key: str) -> int | None:
    """The value of `key` in a flat-keyed cgroup file (memory.events, cpu.stat)."""
    try:
        for line in _read(path).decode().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return None


def _read_int(path: str | Path) -> int | None:
    try:
        return int(_read(path))
    except (OSError, ValueError):
        return None


class ControlFiles:
    """The control files of one cgroup v1 directory, each opened once and then read and
    written in place: a warm jail's cgroups are reset before every one of its runs, and
    opening the files again each time cost more than the reads and writes."""

    def __init__(self, directory: Path) -> None:
        self._dir = str(directory)
        self._fds: dict[str, int | None] = {}

    def _fd(self, name: str) -> int | None:
        if name not in self._fds:
            try:  # kernfs refuses O_RDWR on a file it cannot write (pids.current)
                self._fds[name] = os.open(f"{self._dir}/{name}", os.O_RDWR | os.O_CLOEXEC)
            except PermissionError:
                self._fds[name] = os.open(f"{self._dir}/{name}", os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                self._fds[name] = None
        return self._fds[name]

    def has(self, name: str) -> bool:
        """Whether the directory has this file (memory.memsw.* needs swap accounting)."""
        return self._fd(name) is not None

    def read_int(self, name: str) -> int:
        """The file's value, read afresh (OSError if it has none)."""
        fd = self._fd(name)
        if fd is None:
            raise FileNotFoundError(f"{self._dir}/{name}")
        return int(os.pread(fd, 64, 0))

    def write(self, name: str, value: object) -> None:
        fd = self._fd(name)
        if fd is None:
            raise FileNotFoundError(f"{self._dir}/{name}")
        os.pwrite(fd, str(value).encode(), 0)

    def close(self) -> None:
        for fd in self._fds.values():
            if fd is not None:
                os.close(fd)
        self._fds.clear()


@dataclass(frozen=True)
class V2Cgroup:
    """One cgroup v2 directory: a run's, a sealed child's, or a warm jail's."""

    path: Path
    controllers: frozenset[str]

    def create(self, delegate: bool = False) -> None:
        """Make the directory; with delegate, hand its controllers on to its children."""
        self.path.mkdir()
        if delegate and self.controllers:
            (self.path / "cgroup.subtree_control").write_text(
                " ".join(f"+{name}" for name in sorted(self.controllers)))

    def limit(self, memory_bytes: int, max_pids: int) -> None:
        """Bound everything in this cgroup: memory (no swap; an OOM kill ends all of it),
        processes, and one core."""
        if "memory" in self.controllers:
            self._write("memory.max", memory_bytes)
            self._write("memory.oom.group", 1)
            try:
                self._write("memory.swap.max", 0)
            except FileNotFoundError:  # no swap accounting: there is no swap to limit
                pass
        if "pids" in self.controllers:
            self._write("pids.max", max_pids)
        if "cpu" in self.controllers:
            self._write("cpu.max", f"{CPU_PERIOD_US} {CPU_PERIOD_US}")

    def move(self, pid: int) -> None:
        """Put a process (not its existing children) in this cgroup."""
        self._write("cgroup.procs", pid)

    def usage(self) -> Usage:
        """Peak memory (memory.peak: kernel >= 5.19), CPU time and OOM kills so far."""
        usec = _read_key(f"{self.path}/cpu.stat", "usage_usec")
        kills = _read_key(f"{self.path}/memory.events", "oom_kill")
        return Usage(peak_memory_bytes=_read_int(f"{self.path}/memory.peak"),
                     cpu_ns=None if usec is None else usec * 1000,
                     oom_killed=None if kills is None else kills > 0)

    def remove(self) -> None:
        """Kill whatever is left in this cgroup and its children, then remove them all."""
        if not self.path.exists():
            return
        if _populated(self.path):
            try:
                self._write("cgroup.kill", 1)  # kernel >= 5.14
            except OSError as exc:
                log.warning("could not kill what is left in %s: %s", self.path, exc)
            deadline = time.monotonic() + KILL_WAIT_S
            while _populated(self.path) and time.monotonic() < deadline:
                time.sleep(0.01)
        for child in sorted(self.path.glob("*/"), reverse=True):
            _rmdir(child)
        _rmdir(self.path)

    def _write(self, name: str, value: object) -> None:
        _write(f"{self.path}/{name}", value)


@dataclass
class RunCgroup:
    """One run's (or one warm jail's) cgroups: v1 parents per controller, or a v2 directory."""

    cgroups: Cgroups
    name: str
    _files: dict[str, ControlFiles] = field(default_factory=dict, repr=False)

    @property
    def v2(self) -> V2Cgroup | None:
        """This run's v2 directory, on a cgroup v2 host with usable controllers."""
        if self.cgroups.version != 2 or not self.cgroups.available:
            return None
        return V2Cgroup(self.cgroups.root / PARENT / self.name, self.cgroups.available)

    def path(self, controller: str) -> Path:
        """This run's v1 parent dir for one controller."""
        return self.cgroups.root / controller / PARENT / self.name

    def create(self) -> None:
        """Make the run's directories."""
        if self.v2 is not None:
            self.v2.create(delegate=True)
            return
        for controller in self.cgroups.available:
            self.path(controller).mkdir()

    def bound(self, memory_bytes: int, max_pids: int) -> list[str]:
        """Bound the jail to memory_bytes, max_pids and one core: the nsjail options that put
        it under this run's cgroups, where the host has them.

        On v2 the limits are this directory's own, written now: nsjail only makes a child
        for the jail (which its pids.max option asks it to) and moves the jail there."""
        has, root, parent = self.cgroups.available, self.cgroups.root, f"{PARENT}/{self.name}"
        if self.v2 is not None:
            self.v2.limit(memory_bytes, max_pids)
            return ["--use_cgroupv2", "--cgroupv2_mount", str(self.v2.path),
                    "--cgroup_pids_max", str(max_pids)]
        args: list[str] = []
        if "memory" in has:
            args += ["--cgroup_mem_max", str(memory_bytes), "--cgroup_mem_swap_max", "0",
                     "--cgroup_mem_mount", str(root / "memory"), "--cgroup_mem_parent", parent]
        if "pids" in has:
            args += ["--cgroup_pids_max", str(max_pids),
                     "--cgroup_pids_mount", str(root / "pids"), "--cgroup_pids_parent", parent]
        if "cpu" in has:
            args += ["--cgroup_cpu_ms_per_sec", "1000",
                     "--cgroup_cpu_mount", str(root / "cpu"), "--cgroup_cpu_parent", parent]
        return args

    def usage(self) -> Usage:
        """What the run used so far: the kernel's accounting on v2, the memory peak on v1."""
        if self.v2 is not None:
            return self.v2.usage()
        if "memory" not in self.cgroups.available:
            return Usage()
        try:
            return Usage(peak_memory_bytes=self.files("memory").read_int("memory.max_usage_in_bytes"))
        except (OSError, ValueError):
            return Usage()

    def files(self, controller: str) -> ControlFiles:
        """This run's v1 control files of one controller, kept open until remove()."""
        if controller not in self._files:
            self._files[controller] = ControlFiles(self.path(controller))
        return self._files[controller]

    def limit_run(self, memory_bytes: int, max_pids: int) -> int:
        """cgroup v1, warm jail: cap what is in this cgroup now plus memory_bytes and max_pids
        more for its next run; reset the memory peak. Returns the memory in use now."""
        if "pids" in self.cgroups.available:
            pids = self.files("pids")
            pids.write("pids.max", pids.read_int("pids.current") + max_pids)
        if "memory" not in self.cgroups.available:
            return 0
        memory = self.files("memory")
        in_use = memory.read_int("memory.usage_in_bytes")
        limit = in_use + memory_bytes
        swap = "memory.memsw.limit_in_bytes"
        # memory+swap may never be below memory: raise it first, lower it last.
        order = ["memory.limit_in_bytes"]
        if memory.has(swap):
            order = order + [swap] if memory.read_int(swap) >= limit else [swap] + order
        for name in order:
            memory.write(name, limit)
        memory.write("memory.max_usage_in_bytes", 0)
        return in_use

    def remove(self) -> None:
        """Remove this run's cgroups, including any that nsjail left when it was killed."""
        for files in self._files.values():
            files.close()
        self._files.clear()
        if self.v2 is not None:
            self.v2.remove()
            return
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
def run_cgroup(cgroups: Cgroups, kind: str = "run") -> Iterator[RunCgroup]:
    """Create a run's (or a warm jail's) cgroups; remove them afterwards."""
    run = RunCgroup(cgroups, f"{kind}-{uuid.uuid4().hex}")
    try:
        run.create()
        yield run
    finally:
        run.remove()
