"""Runs inside a warm jail, appended to the harness: forks one fresh, sealed child per run.

The zygote imports numpy and pandas once, as root of the warm jail's own user namespace
(uid 65533 outside, no capability outside it), and keeps two children waiting for the
next runs. Each child is forked into a new pid namespace (it is pid 1 there), enters new
mount and IPC namespaces and a session of its own, mounts its own tmpfs /tmp and
/dev/shm, empties its capability sets, becomes uid 65534 and stacks a seccomp filter on
nsjail's that denies what nsjail's allows only for this setup (mount, unshare, setns).
Only then does it say "ready" on the control socket, handing the host one end of a
socket of its own: the host learns the child's pid from it (SO_PEERCRED), may move it
into a cgroup of its own, and sends it a run's limits and pipes on it, later closing it
to let the reported run end. Given a run, the child tells the zygote to fork the next
child, lowers its rlimits, closes every other fd and runs the harness. The zygote never
runs user code; it reaps each child and reports how it ended and its CPU time.
"""
import ctypes
import gc
import json
import os
import resource
import select
import signal
import socket
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # checkers only: at run time this text follows jail/harness.py's in one
    # `python -c` program, which defines these
    from jail.harness import JAIL_SITE, MPL_CONFIG, SCRIPT_NAME, main, signature_problem

RUN_RECEIVED: resource.struct_rusage | None = None
"""This process's usage when its run arrived: what bench/run.py subtracts to count the
faults and CPU time between a run's arrival and main()."""
CONTROL_FD = int(sys.argv[1])
TMP_BYTES = int(sys.argv[2])
JAIL_UID = 65534
CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWIPC = 0x00020000, 0x20000000, 0x08000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x8, 0x4000, 0x40000
PR_CAPBSET_DROP, CAP_LAST = 24, 63
CAPABILITY_VERSION_3 = 0x20080522
SHM_BYTES = 8 * 1024 * 1024
SPARE_CHILDREN = 2
HOST_DIST_PACKAGES = "/usr/lib/python3/dist-packages"
LIBC = ctypes.CDLL(None, use_errno=True)


def checked(result: int, what: str) -> None:
    """Raise OSError when a libc call failed."""
    if result != 0:
        raise OSError(ctypes.get_errno(), what)


def inner_filter():
    """The seccomp rules stacked on nsjail's before user code runs."""
    sys.path.append(HOST_DIST_PACKAGES)
    import seccomp
    sys.path.remove(HOST_DIST_PACKAGES)
    rules = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for name in ("mount", "umount2", "unshare", "setns", "pivot_root"):
        rules.add_rule(seccomp.ERRNO(1), name)
    return rules


def seal(rules) -> None:
    """Turn this fresh child into a one-run jail: own session and /tmp, no capabilities,
    uid 65534, seccomp."""
    os.setsid()  # its own session and process group: kill(0) reaches no spare child
    checked(LIBC.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make mounts private")
    for path, size in ((b"/tmp", TMP_BYTES), (b"/dev/shm", SHM_BYTES)):
        checked(LIBC.mount(b"tmpfs", path, b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                           b"size=%d,mode=1777" % size), f"mount {path!r}")
    os.chdir("/tmp")  # the fresh tmpfs: the cwd still held the zygote's /tmp, under it
    for cap in range(CAP_LAST + 1):
        LIBC.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    os.setgroups([])
    os.setresgid(JAIL_UID, JAIL_UID, JAIL_UID)
    os.setresuid(JAIL_UID, JAIL_UID, JAIL_UID)
    header = (ctypes.c_uint32 * 2)(CAPABILITY_VERSION_3, 0)
    checked(LIBC.capset(header, (ctypes.c_uint32 * 6)()), "clear capabilities")
    rules.load()


def serve_one_run(control: socket.socket, rules, taken: int) -> None:
    """In the child: seal, say ready, take one run's limits and pipes, run the harness."""
    try:
        seal(rules)
    except OSError as exc:
        control.send(json.dumps({"broken": str(exc)}).encode())
        os._exit(70)
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()  # its own, fresh from the kernel, for this run only
    rehearse()
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    socket.send_fds(control, [b'{"ready": true}'], [theirs.fileno()])
    theirs.close()
    header, fds, _, _ = socket.recv_fds(mine, 4096, 4)
    global RUN_RECEIVED
    RUN_RECEIVED = resource.getrusage(resource.RUSAGE_SELF)
    os.write(taken, b".")
    if not header:  # the host is gone: the zygote sees it too and ends the jail
        os._exit(0)
    try:
        if len(fds) != 4:
            raise OSError(0, f"expected 4 pipes, got {len(fds)}")
        limits = json.loads(header)
        for name in ("RLIMIT_CPU", "RLIMIT_NPROC", "RLIMIT_NOFILE", "RLIMIT_FSIZE", "RLIMIT_AS"):
            resource.setrlimit(getattr(resource, name), (limits[name], limits[name]))
    except (OSError, ValueError, KeyError) as exc:
        control.send(json.dumps({"broken": str(exc)}).encode())
        os._exit(70)
    control.close()
    for target, fd in zip((0, 1, 2), fds[:3], strict=True):
        os.dup2(fd, target)
    report, release = fds[3], mine.detach()
    low, high = sorted((report, release))
    os.closerange(3, low)
    os.closerange(low + 1, high)
    os.closerange(high + 1, 65536)
    main(report, release, limits["FILES_OUT"], limits["FILES_OUT_BYTES"])


def rehearse() -> None:
    """Walk, while waiting, the paths every run takes (JSON both ways, compiling and calling a
    main(), opening a file), so that the copy-on-write faults of the zygote's pages they write
    (reference counts, caches) are taken now, not after the request arrived. Nothing of it is
    kept: the run finds the interpreter as the zygote left it."""
    json.loads(json.dumps({"RLIMIT_CPU": 1, "FILES_OUT": 16}))
    scope: dict = {"__name__": "script"}
    exec(compile("def main():\n    return {'ok': 1}\n", SCRIPT_NAME, "exec", dont_inherit=True), scope)
    signature_problem(scope["main"], 0)
    json.dumps(scope["main"](), allow_nan=False)
    open(os.devnull).close()
    os.path.isdir(MPL_CONFIG)


def warm_up() -> None:
    """Once, in the zygote: the work pandas and numpy do on first use (lazy imports, caches,
    dispatch tables), done here so that no run's process does it again. Only an optimisation:
    a failure here leaves each run to do that work itself."""
    import numpy
    import pandas
    try:
        frame = pandas.DataFrame({"k": ["a", "b", "a", "c"] * 25, "v": range(100),
                                  "x": numpy.arange(100) / 3})
        frame.groupby("k")["v"].sum().to_dict()
        frame.groupby("k").agg({"v": "mean", "x": ["min", "max"]})
        frame.describe()
        frame.merge(frame.head(10), on="k").sort_values("k").reset_index(drop=True)
        frame.to_json()
        frame.to_dict(orient="records")
        numpy.linalg.norm(numpy.arange(10.0))
        numpy.random.default_rng(0).normal(size=10).mean()
    except Exception as exc:  # noqa: BLE001 - see above
        print(f"warm-up failed: {exc!r}", file=sys.stderr)


def ending(status: int, usage: resource.struct_rusage) -> dict:
    """How a child ended and the CPU time it and the children it waited for used."""
    cpu = {"cpu_ns": round((usage.ru_utime + usage.ru_stime) * 1e9)}
    if os.WIFSIGNALED(status):
        return {"signal": signal.Signals(os.WTERMSIG(status)).name, **cpu}
    return {"exit": os.waitstatus_to_exitcode(status), **cpu}


def host_gone(control: socket.socket) -> bool:
    """True once the host's end of the control socket is closed (its process died)."""
    try:
        return control.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False


def spawn(control: socket.socket, rules, taken: int, own_pid_ns: int) -> None:
    """Fork a child as pid 1 of a new pid namespace; it seals itself and waits for a run."""
    checked(LIBC.setns(own_pid_ns, CLONE_NEWPID), "reset the pid namespace for children")
    checked(LIBC.unshare(CLONE_NEWPID), "unshare pid")
    if os.fork() == 0:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        checked(LIBC.unshare(CLONE_NEWNS | CLONE_NEWIPC), "unshare")
        serve_one_run(control, rules, taken)


def serve() -> None:
    """Keep SPARE_CHILDREN sealed children waiting; report each child's end; stop with the host."""
    import numpy  # noqa: F401  (preloaded so that every run finds them imported)
    import pandas  # noqa: F401
    warm_up()
    rules = inner_filter()
    gc.freeze()  # the children's collector never walks (and so never copies) the zygote's heap
    control = socket.socket(fileno=CONTROL_FD)
    own_pid_ns = os.pidfd_open(os.getpid())
    taken_r, taken_w = os.pipe()
    woken_r, woken_w = os.pipe()
    os.set_blocking(woken_w, False)
    signal.set_wakeup_fd(woken_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    waiting = 0
    while True:
        for _ in range(SPARE_CHILDREN - waiting):
            spawn(control, rules, taken_w, own_pid_ns)
        waiting = SPARE_CHILDREN
        readable, _, _ = select.select([taken_r, woken_r], [], [])
        if taken_r in readable:
            waiting -= len(os.read(taken_r, SPARE_CHILDREN))
        if woken_r in readable:
            os.read(woken_r, 4096)
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if not pid:
                break
            control.send(json.dumps(ending(status, usage)).encode())
        if host_gone(control):
            os._exit(0)  # as pid 1 of the warm jail, this ends every process in it


sys.path.append(JAIL_SITE)
serve()
