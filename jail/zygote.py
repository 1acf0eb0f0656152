"""Runs inside a warm jail, appended to the harness: forks one fresh, sealed child per run.

The zygote imports numpy and pandas once, as root of the warm jail's own user namespace
(no capability outside it). Ahead of each run it prepares a child: new mount, pid and IPC
namespaces, its own tmpfs /tmp and /dev/shm, an empty capability bounding set, uid 65534,
and a seccomp filter stacked on nsjail's that denies what nsjail's allows only for this
setup (mount, umount2, unshare). The child says "ready" on the control socket, receives
the run's limits and pipes there, closes the socket and runs the harness. The zygote
never runs user code; after each run the child's reaper reports how the run ended.
"""
import ctypes
import socket

CONTROL_FD = int(sys.argv[1])
TMP_BYTES = int(sys.argv[2])
JAIL_UID = 65534
CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWIPC = 0x00020000, 0x20000000, 0x08000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x8, 0x4000, 0x40000
PR_CAPBSET_DROP, CAP_LAST = 24, 63
SHM_BYTES = 8 * 1024 * 1024
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
    """Turn this fresh child into a one-run jail: own /tmp, no capabilities, uid 65534, seccomp."""
    checked(LIBC.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make mounts private")
    for path, size in ((b"/tmp", TMP_BYTES), (b"/dev/shm", SHM_BYTES)):
        checked(LIBC.mount(b"tmpfs", path, b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                           b"size=%d,mode=1777" % size), f"mount {path!r}")
    for cap in range(CAP_LAST + 1):
        LIBC.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    os.setgroups([])
    os.setresgid(JAIL_UID, JAIL_UID, JAIL_UID)
    os.setresuid(JAIL_UID, JAIL_UID, JAIL_UID)
    rules.load()


def serve_one_run(control: socket.socket, rules) -> None:
    """In the child: seal, say ready, take the run's pipes and limits, run the harness."""
    try:
        seal(rules)
    except OSError as exc:
        control.send(json.dumps({"broken": str(exc)}).encode())
        os._exit(70)
    control.send(b'{"ready": true}')
    header, fds, _, _ = socket.recv_fds(control, 4096, 4)
    if len(fds) != 4:
        os._exit(71)
    limits = json.loads(header)
    control.close()
    for target, fd in zip((0, 1, 2), fds):
        os.dup2(fd, target)
    os.closerange(3, fds[3])
    os.closerange(fds[3] + 1, 65536)
    for name, value in (("RLIMIT_CPU", limits["cpu_s"]), ("RLIMIT_NPROC", limits["max_pids"]),
                        ("RLIMIT_NOFILE", limits["max_open_files"]),
                        ("RLIMIT_FSIZE", limits["fsize_bytes"])):
        resource.setrlimit(getattr(resource, name), (value, value))
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    main(fds[3])


def reap(pid: int) -> dict:
    """How the run's first process ended, as the host expects it."""
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return {"signal": signal.Signals(os.WTERMSIG(status)).name}
    return {"exit": os.waitstatus_to_exitcode(status)}


def serve() -> None:
    """Prepare, run and reap one child at a time, for as long as the host keeps the jail."""
    import numpy
    import pandas  # noqa: F401  (preloaded so every run finds it imported)
    rules = inner_filter()
    control = socket.socket(fileno=CONTROL_FD)
    while True:
        reaper = os.fork()
        if reaper == 0:
            checked(LIBC.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC), "unshare")
            child = os.fork()
            if child == 0:
                serve_one_run(control, rules)
            control.send(json.dumps(reap(child)).encode())
            os._exit(0)
        os.waitpid(reaper, 0)


import resource  # noqa: E402  (this file is appended to the harness, which has the rest)
import signal  # noqa: E402

sys.path.append(JAIL_SITE)
serve()
