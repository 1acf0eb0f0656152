"""Hostile scripts against the real jail: every assertion fails if the attack worked.

Each test runs one or more attacks through jail.run() (real nsjail, no mocks), asserts that
run() returned an Outcome (never raised) with the expected Status, and asserts on what the
script reports it managed to do. After every test a benign script must still run (autouse
fixture). Resource attacks also check the host for processes of uid 65534 left behind.

Probe scripts report each attempt as "DID: ..." (the attack worked) or "BLOCKED: ..."; the
assertion is that nothing starts with "DID".
"""
import concurrent.futures
import json
import os
import socket
import subprocess
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from jail import Limits, Outcome, Sandbox, Status
from jail.paths import paths

REPO = Path(__file__).resolve().parents[2]
HARNESS = REPO / "jail" / "harness.py"
TOKEN = f"pwned-{uuid.uuid4().hex}"
"""What the write attacks try to put into host files; the host checks it never arrives."""
BENIGN = "def main():\n    return 42\n"
QUICK = Limits(timeout_s=2.0, memory_mb=128)
"""For scripts that end on their own."""
SHORT = Limits(timeout_s=1.5, memory_mb=128)
"""For scripts that never end: the time limit is what stops them."""
TIME_MARGIN_S = 2.5
"""How far past its time limit a run may return (nsjail's SIGTERM, kill and reap)."""
CLEAN = frozenset(Status)
"""Any status at all: for attacks where only 'run() returned an Outcome' is determined."""

PRELUDE = f"TOKEN = {TOKEN!r}\n" + textwrap.dedent('''\
    import ctypes, errno, os, signal, socket, stat, subprocess, sys, time

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long


    def attempt(fn):
        """'DID: <what it got>' when fn worked, 'BLOCKED: <error>' when the system refused.

        Any other exception is the probe's own bug ('BROKEN'), which fails the test too.
        """
        try:
            got = fn()
        except OSError as exc:
            return f"BLOCKED: {type(exc).__name__}: {str(exc)[:200]}"
        except BaseException as exc:
            return f"BROKEN: {type(exc).__name__}: {str(exc)[:200]}"
        return f"DID: {got!r}"[:400]


    def raw(nr, *args):
        """A raw syscall through libc (ctypes.CDLL(None).syscall); OSError on -1."""
        conv = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
        ctypes.set_errno(0)
        ret = libc.syscall(ctypes.c_long(nr), *conv)
        err = ctypes.get_errno()
        if ret == -1:
            raise OSError(err, os.strerror(err))
        return ret


    def prctl(*args):
        return libc.prctl(*[ctypes.c_ulong(a) for a in args])


    def clone(flags, clone3=False):
        """A raw clone(2) or clone3(2) with flags; the child (if any) exits at once."""
        if clone3:
            args = flags.to_bytes(8, "little") + bytes(24) + (17).to_bytes(8, "little")
            ret = raw(435, ctypes.create_string_buffer(args + bytes(48), 88), 88)
        else:
            ret = raw(56, flags | 17, 0, 0, 0, 0)
        if ret == 0:
            os._exit(0)
        os.waitpid(ret, 0)
        return ret


    def ptrace_attach():
        pid = os.fork()
        if pid == 0:
            time.sleep(2)
            os._exit(0)
        try:
            return raw(101, 16, pid, 0, 0)
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


    def any_socket(family):
        """Sockets of family made with any of stream, dgram, raw, seqpacket."""
        made, last = [], None
        for kind in (1, 2, 3, 5):
            try:
                made.append((kind, raw(41, family, kind, 0)))
            except OSError as exc:
                last = exc
        if not made:
            raise last
        return made


    def read(path, n=200):
        with open(path, "rb") as f:
            return f.read(n)


    def write(path, data=TOKEN.encode()):
        with open(path, "ab") as f:
            f.write(data)
        return path


    def tcp(host, port, family=socket.AF_INET):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.connect((host, port))
            return s.getpeername()


    def listed(name, directory):
        if name not in os.listdir(directory):
            raise FileNotFoundError(name)
        return name


    def unix(path):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.connect(path)
            return path


    def run_exe(path, *args):
        try:
            done = subprocess.run([path, *args], capture_output=True, timeout=1,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise OSError(f"{path} hung") from exc
        if done.returncode != 0:
            raise OSError(f"exit {done.returncode}: {done.stderr[-200:]!r}")
        return done.stdout[:200]
    ''')


# ------------------------------------------------------------------------------------------
# helpers


def jailed(sandbox: Sandbox, source: str, limits: Limits = QUICK) -> tuple[Outcome, float]:
    """Run a script; run() must return an Outcome, never raise. Returns it and the wall time."""
    start = time.monotonic()
    try:
        outcome = sandbox.run(source, limits)
    except Exception as exc:  # noqa: BLE001 - any exception from run() is the failure
        pytest.fail(f"run() raised {type(exc).__name__}: {exc}")
    elapsed = time.monotonic() - start
    assert isinstance(outcome, Outcome)
    return outcome, elapsed


def describe(outcome: Outcome) -> str:
    return (f"status={outcome.status.value} result={str(outcome.result)[:300]!r} "
            f"message={outcome.message[:300]!r} stderr={outcome.stderr[-500:]!r} "
            f"traceback={(outcome.traceback or '')[-500:]!r}")


def probe(sandbox: Sandbox, setup: str, attacks: dict[str, str], limits: Limits = QUICK) -> dict[str, str]:
    """Run attacks (name -> Python expression) in one jail; return name -> DID/BLOCKED."""
    lines = [PRELUDE, textwrap.dedent(setup), "", "def main():", "    return {"]
    lines += [f"        {name!r}: attempt(lambda: {expr})," for name, expr in attacks.items()]
    lines += ["    }", ""]
    outcome, _ = jailed(sandbox, "\n".join(lines), limits)
    assert outcome.status is Status.OK, describe(outcome)
    assert set(outcome.result) == set(attacks), outcome.result
    return outcome.result


def assert_all_blocked(report: dict[str, str]) -> None:
    broken = {name: what for name, what in report.items() if what.startswith("BROKEN")}
    assert not broken, f"the probe itself is broken (not an OSError): {broken}"
    worked = {name: what for name, what in report.items() if not what.startswith("BLOCKED")}
    assert not worked, f"attack worked inside the jail: {worked}"


def jail_orphans() -> list[str]:
    """uid-65534 processes on the host that no live nsjail owns (i.e. leaked by a jail).

    Plain `pgrep -u 65534` is the check; processes under a live nsjail are filtered out only
    because other test sessions may be running jails on this host at the same time.
    """
    found = subprocess.run(["pgrep", "-u", "65534"], capture_output=True, text=True).stdout
    orphans = []
    for pid in map(int, found.split()):
        if not _under_live_nsjail(pid):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue  # gone meanwhile
            orphans.append(f"{pid}: {cmd[:120]}")
    return orphans


def _under_live_nsjail(pid: int) -> bool:
    for _ in range(64):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return True  # gone: not left behind
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if fields.get("Name", "").strip() == "nsjail":
            return True
        pid = int(fields.get("PPid", "0"))
        if pid <= 1:
            return False
    return False


def assert_no_orphans(within_s: float = 2.0) -> None:
    deadline = time.monotonic() + within_s
    while (orphans := jail_orphans()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not orphans, f"jail processes left on the host: {orphans}"


def assert_token_absent(*paths: Path) -> None:
    """No host file got the attack's token (files are edited concurrently: no hash compare)."""
    for path in paths:
        assert TOKEN.encode() not in path.read_bytes(), f"the jail wrote into host file {path}"


@pytest.fixture(autouse=True)
def benign_run_still_works(sandbox: Sandbox):
    """After every attack, a fresh jail still runs an ordinary script."""
    yield
    outcome = sandbox.run(BENIGN, Limits(timeout_s=5.0, memory_mb=128))
    assert outcome.status is Status.OK and outcome.result == 42, \
        f"benign run after the attack failed: {describe(outcome)}"


# ------------------------------------------------------------------------------------------
# resources: every run ends in time with the expected status, and leaves nothing behind


FORK_BOMB = '''
import os, time
def main():
    while True:
        try:
            os.fork()
        except OSError:
            time.sleep(0.001)
'''

THREAD_BOMB = '''
import threading, time
def main():
    n = 0
    try:
        while n < 5000:
            threading.Thread(target=time.sleep, args=(60,), daemon=False).start()
            n += 1
    except RuntimeError:
        pass
    return n
'''

MEMORY_BYTES = '''
def main():
    hog = b"x" * (2 * 1024 ** 3)
    return len(hog)
'''

MEMORY_CHUNKS = '''
def main():
    hog = []
    while True:
        hog.append(bytes(1 << 20) + b"x")
'''

MEMORY_NUMPY = '''
import numpy as np
def main():
    a = np.ones(10 ** 9)
    return float(a.sum())
'''

CPU_LOOP = '''
def main():
    n = 0
    while True:
        n += 1
'''

CPU_THREADS = '''
import os, threading
def spin():
    while True:
        pass
def main():
    for _ in range(8):
        threading.Thread(target=spin, daemon=True).start()
    spin()
'''

SLEEP_FOREVER = '''
import time
def main():
    time.sleep(10 ** 6)
'''

SIGSTOP_DODGE = '''
import os, signal
def main():
    os.kill(os.getpid(), signal.SIGSTOP)
    os.killpg(0, signal.SIGSTOP)
    pid = os.fork()
    if pid == 0:
        os.kill(os.getpid(), signal.SIGSTOP)
        while True:
            pass
    os.waitpid(pid, 0)
    return "dodged the timeout"
'''

IGNORE_SIGNALS = '''
import signal
def main():
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU, signal.SIGALRM):
        signal.signal(sig, signal.SIG_IGN)
    while True:
        pass
'''

HUGE_PRINT = '''
def main():
    block = "x" * (1 << 20)
    for _ in range(4096):
        print(block)
    return "printed 4 GB"
'''

HUGE_STDERR_RAW = '''
import os
def main():
    block = b"y" * (1 << 20)
    for _ in range(4096):
        os.write(2, block)
    return "wrote 4 GB"
'''

HUGE_RETURN = '''
def main():
    return "x" * (20 * 1024 * 1024)
'''

DEEP_RECURSION = '''
import sys
sys.setrecursionlimit(10 ** 6)
def dive(n):
    return dive(n + 1) + 1
def main():
    return dive(0)
'''

OPEN_FILES = '''
import os, socket
def main():
    fds = []
    try:
        for _ in range(5000):
            fds.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    try:
        for _ in range(5000):
            fds.extend(os.pipe())
    except OSError:
        pass
    try:
        for _ in range(5000):
            fds.extend(s.detach() for s in socket.socketpair())
    except OSError:
        pass
    return len(fds)
'''


def fill_script(directory: str) -> str:
    return f'''
import os
def main():
    written, err = 0, None
    chunk = b"x" * (1 << 20)
    try:
        for i in range(16):
            with open(f"{directory}/fill{{i}}", "wb") as f:
                for _ in range(4):
                    f.write(chunk)
                    written += 1
    except OSError as exc:
        err = exc.strerror
    st = os.statvfs("{directory}")
    return {{"written_mb": written, "fs_size_mb": (st.f_blocks * st.f_frsize) >> 20, "error": err}}
'''


def _limited(cap_mb: int):
    def check(outcome: Outcome) -> None:
        assert outcome.result["written_mb"] <= cap_mb, \
            f"wrote {outcome.result['written_mb']} MB, past the {cap_mb} MB cap: {outcome.result}"
        assert outcome.result["fs_size_mb"] <= cap_mb, \
            f"the filesystem is {outcome.result['fs_size_mb']} MB, not capped at {cap_mb} MB"
    return check


def _fewer_than_pids(outcome: Outcome) -> None:
    assert isinstance(outcome.result, int) and outcome.result < SHORT.max_pids, outcome.result


def _few_fds(outcome: Outcome) -> None:
    assert isinstance(outcome.result, int) and outcome.result <= QUICK.max_open_files, \
        f"opened {outcome.result} descriptors, past the {QUICK.max_open_files} limit"


def _output_capped(outcome: Outcome) -> None:
    assert outcome.output_truncated
    assert len(outcome.stdout.encode()) + len(outcome.stderr.encode()) <= QUICK.max_output_bytes


RESOURCES = [
    pytest.param(FORK_BOMB, SHORT, {Status.TIMEOUT}, None, id="fork-bomb"),
    pytest.param(THREAD_BOMB, SHORT, {Status.OK}, _fewer_than_pids, id="thread-bomb"),
    pytest.param(MEMORY_BYTES, QUICK, {Status.MEMORY_LIMIT}, None, id="memory-bytes-2GB"),
    pytest.param(MEMORY_CHUNKS, QUICK, {Status.MEMORY_LIMIT}, None, id="memory-list-of-chunks"),
    pytest.param(MEMORY_NUMPY, Limits(timeout_s=4.0, memory_mb=128), {Status.MEMORY_LIMIT}, None,
                 id="memory-numpy-8GB"),
    pytest.param(CPU_LOOP, SHORT, {Status.TIMEOUT}, None, id="cpu-loop"),
    pytest.param(CPU_THREADS, SHORT, {Status.TIMEOUT}, None, id="cpu-9-threads"),
    pytest.param(SLEEP_FOREVER, SHORT, {Status.TIMEOUT}, None, id="sleep-forever"),
    pytest.param(SIGSTOP_DODGE, SHORT, {Status.TIMEOUT}, None, id="sigstop-to-dodge-timeout"),
    pytest.param(IGNORE_SIGNALS, SHORT, {Status.TIMEOUT}, None, id="ignore-sigterm-and-spin"),
    pytest.param(fill_script("/tmp"), QUICK, {Status.OK}, _limited(QUICK.tmp_mb),
                 id="disk-fill-tmp"),
    pytest.param(fill_script("/dev/shm"), QUICK, {Status.OK}, _limited(8), id="disk-fill-dev-shm"),
    pytest.param(HUGE_PRINT, QUICK, {Status.OUTPUT_LIMIT}, _output_capped, id="print-4GB"),
    pytest.param(HUGE_STDERR_RAW, QUICK, {Status.OUTPUT_LIMIT}, _output_capped,
                 id="raw-stderr-4GB"),
    pytest.param(HUGE_RETURN, QUICK, {Status.RESULT_TOO_LARGE}, None, id="return-20MB"),
    pytest.param(DEEP_RECURSION, Limits(timeout_s=4.0, memory_mb=128),
                 {Status.MAIN_ERROR, Status.MEMORY_LIMIT, Status.NO_RESULT}, None,
                 id="deep-recursion"),
    pytest.param(OPEN_FILES, QUICK, {Status.OK}, _few_fds, id="thousands-of-open-files"),
]


@pytest.mark.parametrize("source, limits, expected, check", RESOURCES)
def test_resource_attack_is_contained(sandbox, source, limits, expected, check):
    outcome, elapsed = jailed(sandbox, source, limits)
    assert outcome.status in expected, describe(outcome)
    assert elapsed <= limits.timeout_s + TIME_MARGIN_S, \
        f"run took {elapsed:.1f} s with a {limits.timeout_s} s limit"
    if check is not None:
        check(outcome)
    assert_no_orphans()


QUOTA_GRAB = '''
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
rt = ctypes.CDLL("librt.so.1", use_errno=True)
class MqAttr(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_long), ("maxmsg", ctypes.c_long),
                ("msgsize", ctypes.c_long), ("curmsgs", ctypes.c_long), ("pad", ctypes.c_long * 4)]
def grab_inotify():
    n = 0
    while libc.inotify_init1(0) >= 0:
        n += 1
    return n
def grab_mqueue():
    n = 0
    while rt.mq_open(f"/q{os.getpid()}-{n}".encode(), os.O_CREAT | os.O_RDWR, 0o600,
                     ctypes.byref(MqAttr(0, 10, 8192, 0))) >= 0:
        n += 1
    return n
def main():
    grab = grab_{kind}
    pipes = []
    for _ in range(4):
        r, w = os.pipe()
        if os.fork() == 0:
            os.write(w, str(grab()).encode())
            time.sleep(3)
            os._exit(0)
        pipes.append(r)
    total = grab() + sum(int(os.read(r, 20)) for r in pipes)
    time.sleep(2.0)
    return total
'''


def _host_inotify() -> bool:
    import ctypes
    fd = ctypes.CDLL(None, use_errno=True).inotify_init1(0)
    if fd >= 0:
        os.close(fd)
    return fd >= 0


def _host_mqueue() -> bool:
    import ctypes

    class MqAttr(ctypes.Structure):
        _fields_ = [("flags", ctypes.c_long), ("maxmsg", ctypes.c_long),
                    ("msgsize", ctypes.c_long), ("curmsgs", ctypes.c_long),
                    ("pad", ctypes.c_long * 4)]
    rt = ctypes.CDLL("librt.so.1", use_errno=True)
    name = f"/pysandbox-adv-{uuid.uuid4().hex}".encode()
    fd = rt.mq_open(name, os.O_CREAT | os.O_RDWR, 0o600, ctypes.byref(MqAttr(0, 10, 8192, 0)))
    if fd >= 0:
        os.close(fd)
        rt.mq_unlink(name)
    return fd >= 0


@pytest.mark.parametrize("kind, host_can", [
    pytest.param("inotify", _host_inotify, id="inotify-instances"),
    pytest.param("mqueue", _host_mqueue, id="posix-mqueue-bytes"),
])
def test_jail_cannot_exhaust_host_root_quotas(sandbox, kind, host_can):
    """Per-user kernel quotas the jail uses must not be the host root's (the userns owner's).

    The jail grabs every inotify instance / POSIX mqueue byte it can and holds them for 2 s;
    meanwhile this (root) test process must still be able to get one.
    """
    assert host_can(), f"the host cannot get a {kind} even before the attack"
    starved = 0
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        attack = pool.submit(jailed, sandbox, QUOTA_GRAB.replace("{kind}", kind),
                             Limits(timeout_s=4.0, memory_mb=128))
        deadline = time.monotonic() + 2.0
        time.sleep(0.3)
        while time.monotonic() < deadline and not attack.done():
            starved += not host_can()
            time.sleep(0.05)
        outcome, _ = attack.result()
    assert outcome.status is Status.OK, describe(outcome)
    assert starved == 0, (f"while a jail held {outcome.result} {kind} objects, the host's root "
                          f"could not get one ({starved} failed attempts)")
    assert host_can()


# ------------------------------------------------------------------------------------------
# filesystem


FS_READS = [
    pytest.param({"shadow": "read('/etc/shadow')"}, id="etc-shadow"),
    pytest.param({"passwd": "read('/etc/passwd')", "hosts": "read('/etc/hosts')"},
                 id="etc-passwd"),
    pytest.param({"listdir": f"os.listdir({str(REPO / 'api')!r})",
                  "init": f"read({str(REPO / 'api' / '__init__.py')!r})"}, id="service-api-source"),
    pytest.param({"nsjail_py": f"read({str(REPO / 'jail' / 'nsjail.py')!r})",
                  "nsjail_cfg": f"read({str(REPO / 'jail' / 'nsjail.cfg')!r})",
                  "repo": f"os.listdir({str(REPO)!r})"}, id="service-jail-source"),
    pytest.param({"venv": f"os.listdir({str(REPO / '.venv')!r})",
                  "cfg": f"read({str(REPO / '.venv' / 'pyvenv.cfg')!r})"}, id="service-venv"),
    pytest.param({"environ1": "read('/proc/1/environ')",
                  "environ_self": "read('/proc/self/environ')"}, id="proc-1-environ"),
    pytest.param({"dotdot": "os.listdir('/proc/self/..')",
                  "root": "os.listdir('/proc/self/root/..')",
                  "cwd": "os.listdir('/proc/self/cwd/../..')"}, id="proc-self-dotdot"),
    pytest.param({"ppid": "read(f'/proc/{os.getppid()}/cmdline')",
                  "pid1": "read('/proc/1/cmdline')", "mounts": "read('/proc/self/mounts')"},
                 id="parent-cmdline"),
    pytest.param({"root_home": "os.listdir('/root')", "home": "os.listdir('/home')",
                  "var": "os.listdir('/var')", "work": "os.listdir('/work')",
                  "dotdot": "os.listdir('/tmp/../../../etc')"}, id="host-directories"),
]


@pytest.mark.parametrize("attacks", FS_READS)
def test_host_file_is_not_readable(sandbox, attacks):
    assert_all_blocked(probe(sandbox, "", attacks))


def test_root_holds_only_the_runtime(sandbox):
    outcome, _ = jailed(sandbox, PRELUDE + "\ndef main():\n    return sorted(os.listdir('/'))\n")
    assert outcome.status is Status.OK, describe(outcome)
    host_only = set(outcome.result) & {"etc", "home", "root", "var", "work", "proc", "sys",
                                       "run", "srv", "mnt", "boot", "media"}
    assert not host_only, f"host directories visible in the jail: {outcome.result}"


def test_host_tmp_file_is_invisible(sandbox):
    marker = Path(f"/tmp/pysandbox-adv-{uuid.uuid4().hex}")
    marker.write_text("host secret")
    try:
        report = probe(sandbox, "", {"read": f"read({str(marker)!r})",
                            "listed": f"listed({marker.name!r}, '/tmp')"})
    finally:
        marker.unlink()
    assert_all_blocked(report)


FS_WRITES = [
    pytest.param({"file": "write('/usr/pwned')", "bin": "write('/usr/bin/pwned')",
                  "python": "write('/usr/bin/python3')", "lib": "write('/lib/pwned')"},
                 id="write-usr"),
    pytest.param({"file": "write('/etc/pwned')", "mkdir": "os.mkdir('/etc')",
                  "root": "write('/pwned')"}, id="write-etc-and-root"),
    pytest.param({"new": "write('/opt/site/pwned.py')",
                  "numpy": "write('/opt/site/numpy/__init__.py')",
                  "rename": "os.rename('/opt/site/numpy', '/opt/site/numpy2')"},
                 id="write-opt-site"),
    pytest.param({"append": "write('/sandbox/harness.py')",
                  "unlink": "os.unlink('/sandbox/harness.py')",
                  "chmod": "os.chmod('/sandbox/harness.py', 0o777)",
                  "new": "write('/sandbox/pwned.py')"}, id="write-sandbox-harness"),
    pytest.param({"dev_new": "write('/dev/pwned')", "dev_mkdir": "os.mkdir('/dev/x')",
                  "dev_rm": "os.unlink('/dev/null')"}, id="write-dev"),
]


@pytest.mark.parametrize("attacks", FS_WRITES)
def test_read_only_places_are_read_only(sandbox, attacks):
    assert_all_blocked(probe(sandbox, "", attacks))
    assert_token_absent(HARNESS, paths().site_dir / "numpy" / "__init__.py",
                        Path("/usr/bin/python3").resolve())


def test_cwd_is_the_private_scratch_tmpfs(sandbox):
    name = f"pysandbox-adv-cwd-{uuid.uuid4().hex}"
    source = PRELUDE + textwrap.dedent(f'''
        def main():
            write({name!r})
            return {{"cwd": os.getcwd(), "abs": os.path.abspath({name!r}),
                     "up": sorted(os.listdir(".."))}}
        ''')
    outcome, _ = jailed(sandbox, source)
    assert outcome.status is Status.OK, describe(outcome)
    assert outcome.result["cwd"] == "/tmp", outcome.result
    leaked = [str(p) for base in (Path("/tmp"), REPO, Path.cwd()) for p in base.glob(name)]
    assert not leaked, f"a file written in the jail's cwd appeared on the host: {leaked}"


EXEC_SETUP = '''
def drop_exe(directory):
    """A setuid copy of /usr/bin/id and a setuid shell script in directory; run both."""
    exe, sh = os.path.join(directory, "id"), os.path.join(directory, "x.sh")
    with open("/usr/bin/id", "rb") as src, open(exe, "wb") as dst:
        dst.write(src.read())
    with open(sh, "w") as f:
        f.write("#!/bin/sh\\necho pwned\\n")
    os.chmod(exe, 0o4755)
    os.chmod(sh, 0o4755)
    return run_exe(exe), run_exe(sh)


def writable_dirs():
    found = []
    for top in os.listdir("/"):
        for d in [os.path.join("/", top)] + [os.path.join("/", top, s) for s in
                                              (os.listdir(os.path.join("/", top))
                                               if os.path.isdir(os.path.join("/", top))
                                               and top not in ("usr", "lib", "bin", "lib64")
                                               else [])]:
            if os.path.isdir(d) and os.access(d, os.W_OK):
                found.append(d)
    return found


def exec_anywhere():
    did = {}
    for d in writable_dirs():
        try:
            did[d] = drop_exe(d)
        except OSError:
            pass
    if did:
        return did
    raise OSError("no writable directory allows exec")


def memfd_exec():
    fd = os.memfd_create("x", 0)
    with open("/usr/bin/echo", "rb") as src:
        os.write(fd, src.read())
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.dup2(w, 1)
        try:
            os.execve(fd, ["echo", "pwned-from-memfd"], {})
        finally:
            os._exit(9)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    out = os.read(r, 100)
    if status != 0 or not out:
        raise OSError(f"exec from memfd failed: {status}")
    return out
'''

FS_EXEC = [
    pytest.param({"tmp": "drop_exe('/tmp')"}, id="setuid-exec-in-tmp"),
    pytest.param({"shm": "drop_exe('/dev/shm')"}, id="setuid-exec-in-dev-shm"),
    pytest.param({"any": "exec_anywhere()"}, id="exec-in-any-writable-dir"),
    pytest.param({"memfd": "memfd_exec()"}, id="exec-from-memfd"),
    pytest.param({"mount": "run_exe('/usr/bin/mount', '-t', 'tmpfs', 'none', '/opt')",
                  "umount": "run_exe('/usr/bin/umount', '/sandbox/harness.py')",
                  "su": "run_exe('/usr/bin/su', '-c', 'id')"}, id="host-setuid-binaries"),
]


@pytest.mark.parametrize("attacks", FS_EXEC)
def test_no_exec_of_dropped_files(sandbox, attacks):
    assert_all_blocked(probe(sandbox, EXEC_SETUP, attacks))


LINK_SETUP = '''
def symlink_read(target):
    os.symlink(target, "/tmp/link")
    return read("/tmp/link")


def symlink_write(target):
    os.symlink(target, "/tmp/wlink")
    return write("/tmp/wlink")


def hardlink_write(target, link):
    os.link(target, link)
    return write(link)
'''

FS_LINKS = [
    pytest.param({"shadow": "symlink_read('/etc/shadow')"}, id="symlink-to-etc-shadow"),
    pytest.param({"repo": f"symlink_read({str(REPO / 'jail' / 'nsjail.py')!r})"},
                 id="symlink-to-service-source"),
    pytest.param({"harness": "symlink_write('/sandbox/harness.py')"},
                 id="symlink-to-harness-write"),
    pytest.param({"tmp": "hardlink_write('/sandbox/harness.py', '/tmp/h')",
                  "shm": "hardlink_write('/sandbox/harness.py', '/dev/shm/h')",
                  "python": "hardlink_write('/usr/bin/python3', '/tmp/py')"},
                 id="hardlink-of-harness"),
]


@pytest.mark.parametrize("attacks", FS_LINKS)
def test_link_tricks_do_not_reach_outside(sandbox, attacks):
    assert_all_blocked(probe(sandbox, LINK_SETUP, attacks))
    assert_token_absent(HARNESS)


def test_dev_holds_only_harmless_devices(sandbox):
    outcome, _ = jailed(sandbox, "import os\ndef main():\n    return sorted(os.listdir('/dev'))\n")
    assert outcome.status is Status.OK, describe(outcome)
    assert set(outcome.result) <= {"null", "zero", "urandom", "random", "shm"}, outcome.result


def test_dangerous_devices_absent_and_mknod_fails(sandbox):
    attacks = {f"exists_{d}": f"os.stat('/dev/{d}')"
               for d in ("mem", "kmem", "kmsg", "port", "kvm", "sda", "vda", "tty", "console",
                         "fuse", "net/tun", "vsock", "vhost-vsock")}
    attacks |= {
        "mknod_tmp": "os.mknod('/tmp/mem', stat.S_IFCHR | 0o666, os.makedev(1, 1))",
        "mknod_shm": "os.mknod('/dev/shm/kmsg', stat.S_IFCHR | 0o666, os.makedev(1, 11))",
        "mknod_blk": "os.mknod('/tmp/sda', stat.S_IFBLK | 0o666, os.makedev(8, 0))",
        "read_node": "(os.mknod('/tmp/m2', stat.S_IFCHR | 0o666, os.makedev(1, 1)), "
                     "read('/tmp/m2'))",
    }
    assert_all_blocked(probe(sandbox, "", attacks))


def test_sys_and_proc_absent(sandbox):
    assert_all_blocked(probe(sandbox, "", {"sys": "os.listdir('/sys')", "proc": "os.listdir('/proc')",
                                  "cgroup": "os.listdir('/sys/fs/cgroup')"}))


# ------------------------------------------------------------------------------------------
# network


NETWORK = [
    pytest.param({"tcp": "tcp('1.1.1.1', 80)"}, id="tcp-1.1.1.1-80"),
    pytest.param({"tcp": "tcp('127.0.0.1', 8080)", "lo6": "tcp('::1', 8080, socket.AF_INET6)"},
                 id="tcp-localhost-8080"),
    pytest.param({"udp": "socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
                         ".sendto(b'x', ('8.8.8.8', 53))"}, id="udp-sendto"),
    pytest.param({"dns": "socket.getaddrinfo('example.com', 80)",
                  "byname": "socket.gethostbyname('example.com')"}, id="dns-resolution"),
    pytest.param({"metadata": "tcp('169.254.169.254', 80)"}, id="cloud-metadata-server"),
    pytest.param({"inet6": "tcp('2606:4700:4700::1111', 80, socket.AF_INET6)",
                  "socket6": "socket.socket(socket.AF_INET6)"}, id="af-inet6"),
    pytest.param({"packet": "socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0x0300)",
                  "raw_icmp": "socket.socket(socket.AF_INET, socket.SOCK_RAW, "
                              "socket.IPPROTO_ICMP)",
                  "ping": "socket.socket(socket.AF_INET, socket.SOCK_DGRAM, "
                          "socket.IPPROTO_ICMP)"}, id="af-packet-and-raw-ip"),
    pytest.param({"netlink": "socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)",
                  "netlink_raw": "raw(41, 16, 3, 0)"}, id="af-netlink"),
    pytest.param({f"family_{fam}": f"any_socket({fam})"
                  for fam in (2, 10, 16, 17, 21, 29, 30, 31, 38, 40, 44)},
                 id="other-families-raw"),
    pytest.param({"docker": "unix('/var/run/docker.sock')",
                  "docker_run": "unix('/run/docker.sock')",
                  "redis": "unix('/run/redis/redis.sock')"}, id="host-unix-sockets"),
    pytest.param({"pair": "socket.socketpair(socket.AF_INET)"}, id="socketpair-af-inet"),
]


@pytest.mark.parametrize("attacks", NETWORK)
def test_no_network(sandbox, attacks):
    assert_all_blocked(probe(sandbox, "", attacks))


def test_host_listeners_unreachable(sandbox):
    """A TCP and an abstract unix socket listening on the host: the jail reaches neither."""
    tcp_server = socket.create_server(("127.0.0.1", 0))
    abstract = f"\0pysandbox-adv-{uuid.uuid4().hex}"
    unix_server = socket.socket(socket.AF_UNIX)
    unix_server.bind(abstract)
    unix_server.listen()
    port = tcp_server.getsockname()[1]
    try:
        report = probe(sandbox, "", {"tcp": f"tcp('127.0.0.1', {port})",
                            "abstract": f"unix({abstract!r})"})
        for server in (tcp_server, unix_server):
            server.setblocking(False)
            with pytest.raises(BlockingIOError):
                server.accept()
    finally:
        tcp_server.close()
        unix_server.close()
    assert_all_blocked(report)


def test_no_interface_but_loopback(sandbox):
    source = "import socket\ndef main():\n" \
             "    try:\n        return [n for _, n in socket.if_nameindex()]\n" \
             "    except OSError as exc:\n        return str(exc)\n"
    outcome, _ = jailed(sandbox, source)
    assert outcome.status is Status.OK, describe(outcome)
    assert isinstance(outcome.result, str) or set(outcome.result) <= {"lo"}, outcome.result


# ------------------------------------------------------------------------------------------
# privilege


PRIVILEGE = [
    pytest.param({"setuid": "os.setuid(0)", "seteuid": "os.seteuid(0)",
                  "setresuid": "os.setresuid(0, 0, 0)"}, id="setuid-0"),
    pytest.param({"setgid": "os.setgid(0)", "setgroups": "os.setgroups([0])"}, id="setgid-0"),
    pytest.param({"traceme": "raw(101, 0, 0, 0, 0)", "attach_child": "ptrace_attach()"},
                 id="ptrace"),
    pytest.param({"vm_read": "raw(310, os.getpid(), 0, 0, 0, 0, 0)",
                  "kcmp": "raw(312, 1, 1, 0, 0, 0)"}, id="process-vm-readv-and-kcmp"),
    pytest.param({"user": "raw(272, 0x10000000)", "net": "raw(272, 0x40000000)",
                  "mnt": "raw(272, 0x00020000)"}, id="unshare-newuser"),
    pytest.param({"setns": "raw(308, 0, 0)", "setns_user": "raw(308, 1, 0x10000000)"},
                 id="setns"),
    pytest.param({"mount": "raw(165, b'none', b'/opt', b'tmpfs', 0, None)",
                  "umount": "raw(166, b'/sandbox/harness.py', 2)",
                  "pivot_root": "raw(155, b'/tmp', b'/tmp')",
                  "fsopen": "raw(430, b'tmpfs', 0)",
                  "open_tree": "raw(428, -100, b'/tmp', 1)"}, id="mount-family"),
    pytest.param({"chroot": "os.chroot('/tmp')"}, id="chroot"),
    pytest.param({"map_create": "raw(321, 0, ctypes.create_string_buffer("
                                "bytes([2,0,0,0, 4,0,0,0, 4,0,0,0, 1,0,0,0]) + bytes(56), 72), "
                                "72)",
                  "prog_load": "raw(321, 5, ctypes.create_string_buffer(128), 128)"}, id="bpf"),
    pytest.param({"session": "raw(250, 0, -3, 1)", "process": "raw(250, 0, -2, 1)"},
                 id="keyctl"),
    pytest.param({"add_key": "raw(248, b'user', b'k', b'v', 1, -2)",
                  "request_key": "raw(249, b'user', b'k', None, 0)"}, id="add-key"),
    pytest.param({"perf": "raw(298, ctypes.create_string_buffer(__import__('struct').pack("
                          "'<IIQQQQQ', 1, 128, 0, 0, 0, 0, 0x60) + bytes(80), 128), 0, -1, -1, 0)"},
                 id="perf-event-open"),
    pytest.param({"uffd": "raw(323, 1)", "uffd0": "raw(323, 0)"}, id="userfaultfd"),
    pytest.param({"setup": "raw(425, 1, ctypes.create_string_buffer(120))"},
                 id="io-uring-setup"),
    pytest.param({"query": "raw(135, 0xffffffff)", "no_aslr": "raw(135, 0x0040000)"},
                 id="personality"),
    pytest.param({"newuser": "clone(0x10000000)", "newnet": "clone(0x40000000)",
                  "newpid": "clone(0x20000000)", "newns": "clone(0x00020000)",
                  "newcgroup": "clone(0x02000000)", "newtime": "clone(0x00000080)",
                  "clone3_newuser": "clone(0x10000000, clone3=True)",
                  "clone3_plain": "clone(0, clone3=True)"}, id="clone-newuser-raw"),
    pytest.param({"finit_module": "raw(313, 0, b'', 0)", "init_module": "raw(175, None, 0, b'')",
                  "delete_module": "raw(176, b'ext4', 0)", "kexec": "raw(246, 0, 0, None, 0)"},
                 id="kernel-modules-and-kexec"),
    pytest.param({"reboot": "raw(169, 0xfee1dead, 672274793, 0, None)",
                  "swapon": "raw(167, b'/tmp/swap', 0)", "acct": "raw(163, None)",
                  "syslog": "raw(103, 3, ctypes.create_string_buffer(4096), 4096)",
                  "settimeofday": "raw(164, ctypes.create_string_buffer(16), None)",
                  "clock_settime": "raw(227, 0, ctypes.create_string_buffer(16))"},
                 id="reboot-swapon-syslog-clock"),
]


@pytest.mark.parametrize("attacks", PRIVILEGE)
def test_privileged_operation_fails(sandbox, attacks):
    assert_all_blocked(probe(sandbox, "", attacks))


def test_no_capabilities(sandbox):
    source = PRELUDE + textwrap.dedent('''
        def main():
            header = (ctypes.c_uint32 * 2)(0x20080522, 0)
            data = (ctypes.c_uint32 * 6)()
            raw(125, header, data)
            ambient = [c for c in range(41) if prctl(47, 1, c, 0, 0) == 1]
            return {"effective": [data[0], data[3]], "permitted": [data[1], data[4]],
                    "inheritable": [data[2], data[5]], "ambient": ambient,
                    "uid": os.getresuid(), "gid": os.getresgid(), "groups": os.getgroups()}
        ''')
    outcome, _ = jailed(sandbox, source)
    assert outcome.status is Status.OK, describe(outcome)
    caps = outcome.result
    assert caps["effective"] == [0, 0] and caps["permitted"] == [0, 0], caps
    assert caps["inheritable"] == [0, 0] and caps["ambient"] == [], caps
    assert set(caps["uid"]) == {65534} and set(caps["gid"]) == {65534}, caps
    assert 0 not in caps["groups"], caps


def test_no_new_privs_is_set(sandbox):
    source = PRELUDE + "\ndef main():\n    return prctl(39, 0, 0, 0, 0)\n"
    outcome, _ = jailed(sandbox, source)
    assert outcome.status is Status.OK and outcome.result == 1, describe(outcome)


KILL_EVERYTHING = '''
import os, signal, time
def main():
    pid = os.fork()
    if pid == 0:
        me = os.getpid()
        for target in range(1, 5000):
            if target != me:
                try:
                    os.kill(target, signal.SIGKILL)
                except OSError:
                    pass
        for sig in (signal.SIGSTOP, signal.SIGTERM, signal.SIGKILL):
            for target in (-1, 1):
                try:
                    os.kill(target, sig)
                except OSError:
                    pass
        os.kill(0, signal.SIGKILL)  # its process group: the jail's pid 1 and itself
        os._exit(0)
    os.waitpid(pid, 0)
    for target in (-1, 0, 1):
        try:
            os.kill(target, signal.SIGKILL)
        except OSError:
            pass
    return "harness alive"
'''

SIBLING = '''
import time
def main():
    time.sleep(1.0)
    return "sibling alive"
'''


def test_kill_everything_reaches_nothing_outside(sandbox):
    """kill(-1), kill(0), kill(1) and every pid from inside: a concurrent jail and the host survive."""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        sibling = pool.submit(jailed, sandbox, SIBLING, Limits(timeout_s=4.0, memory_mb=64))
        time.sleep(0.2)
        outcome, _ = jailed(sandbox, KILL_EVERYTHING)
        sibling_outcome, _ = sibling.result()
    assert outcome.status is Status.OK and outcome.result == "harness alive", describe(outcome)
    assert sibling_outcome.status is Status.OK and sibling_outcome.result == "sibling alive", \
        describe(sibling_outcome)
    os.kill(os.getpid(), 0)  # the test process itself is still here
    assert_no_orphans()


# ------------------------------------------------------------------------------------------
# result channel

REPORT_FD_FINDER = '''
import os, stat
def report_fd():
    """The result pipe: a FIFO that is neither stdin, stdout nor stderr."""
    for fd in range(3, 1024):
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                return fd
        except OSError:
            pass
    raise RuntimeError("no report fd")
'''

GARBAGE_EVERY_FD = '''
import os
def main():
    for fd in range(3, 1024):
        try:
            os.write(fd, b'garbage {"status": "ok", "result": "forged"} \\xff\\xfe')
        except OSError:
            pass
    return "real"
'''

CLOSE_ALL_FDS = '''
import os
def main():
    os.closerange(0, 1024)
    return "real"
'''

CLOSE_REPORT_DUP_STDOUT = REPORT_FD_FINDER + '''
def main():
    fd = report_fd()
    os.dup2(1, fd)
    return "real"
'''

FORGED_THEN_RETURN = REPORT_FD_FINDER + '''
def main():
    os.write(report_fd(), b'{"status": "ok", "result": "forged"}')
    return "real"
'''


def forged_report(payload: bytes) -> str:
    """A script that writes payload as the whole report, then ends before the harness can."""
    return REPORT_FD_FINDER + f'''
def main():
    fd = report_fd()
    data = {payload!r}
    while data:
        data = data[os.write(fd, data):]
    os._exit(0)
'''


HOSTILE_OBJECTS = '''
class Hostile:
    def __repr__(self):
        raise RuntimeError("repr")
    def __str__(self):
        raise RuntimeError("str")
    def __format__(self, spec):
        raise RuntimeError("format")
'''

LYING_CLASS = '''
class Liar:
    @property
    def __class__(self):
        return dict
    def __iter__(self):
        raise RuntimeError("iter")
def main():
    return Liar()
'''

HOSTILE_DICT = '''
class Evil(dict):
    def items(self):
        raise KeyboardInterrupt("items")
    def keys(self):
        raise SystemExit(3)
def main():
    return Evil(a=1)
'''

HOSTILE_STR_SUBCLASS = '''
class S(str):
    def __str__(self):
        raise RuntimeError("str")
    def __repr__(self):
        raise RuntimeError("repr")
    def encode(self, *a, **k):
        raise RuntimeError("encode")
class I(int):
    def __repr__(self):
        raise RuntimeError("repr")
    def __str__(self):
        return "not a number"
def main():
    return [S("text"), I(7)]
'''

HOSTILE_EXCEPTION_STR = '''
class Boom(Exception):
    def __str__(self):
        raise Boom()
def main():
    raise Boom()
'''

HOSTILE_EXCEPTION_NAME = '''
class Meta(type):
    @property
    def __name__(cls):
        raise RuntimeError("name")
class Boom(Exception, metaclass=Meta):
    pass
def main():
    raise Boom("x")
'''

HUGE_EXCEPTION = '''
def main():
    raise ValueError("x" * (8 * 1024 * 1024))
'''

BIG_INT_UNLIMITED = '''
import sys
sys.set_int_max_str_digits(0)
def main():
    return 10 ** 100000
'''

PATCH_JSON_GARBAGE = '''
import json
def main():
    json.dumps = lambda *a, **k: '1, "extra": {'
    return "real"
'''

PATCH_JSON_INFINITY = '''
import json
def main():
    json.dumps = lambda *a, **k: "1e999"
    return 1
'''

PATCH_BUILTINS = '''
import builtins, json, os
def main():
    builtins.isinstance = lambda *a: True
    builtins.str = lambda *a: 1 / 0
    builtins.len = None
    builtins.open = None
    builtins.memoryview = lambda *a: 1 / 0
    os.write = lambda fd, data: len(data)
    json.dumps = None
    return "real"
'''

PATCH_OS_EXIT = '''
import os, sys
def main():
    os._exit = lambda code: None
    sys.exit = lambda *a: None
    return "real"
'''

PATCH_STDOUT = '''
import sys
class Stuck:
    def write(self, s):
        return len(s)
    def flush(self):
        raise KeyboardInterrupt("flush")
def main():
    sys.stdout = Stuck()
    sys.stderr = Stuck()
    return "real"
'''

ATEXIT_LOOP = '''
import atexit, threading, time
def forever():
    while True:
        time.sleep(0.01)
def main():
    atexit.register(print, "x" * 100000)
    atexit.register(forever)
    threading.Thread(target=forever, daemon=False).start()
    return "real"
'''


def _is(value):
    def check(outcome: Outcome) -> None:
        if outcome.status is Status.OK:
            assert outcome.result == value, f"result was replaced: {outcome.result!r}"
    return check


def _strict_json(outcome: Outcome) -> None:
    try:
        json.dumps(outcome.to_dict(), allow_nan=False)
    except ValueError as exc:
        pytest.fail(f"the Outcome is not strict JSON ({exc}): result={outcome.result!r}")


RESULT_CHANNEL = [
    pytest.param("import sys\ndef main():\n"
                 "    print('{\"status\": \"ok\", \"result\": \"forged\"}')\n"
                 "    print('{\"status\": \"ok\", \"result\": \"forged\"}', file=sys.stderr)\n"
                 "    return 'real'\n", {Status.OK}, _is("real"), id="forged-report-on-stdout"),
    pytest.param(GARBAGE_EVERY_FD, {Status.INVALID_RESULT, Status.OK}, _is("real"),
                 id="garbage-to-every-fd"),
    pytest.param(CLOSE_ALL_FDS, {Status.NO_RESULT}, None, id="close-all-fds"),
    pytest.param(CLOSE_REPORT_DUP_STDOUT, {Status.NO_RESULT}, None,
                 id="stdout-dup2-over-report-fd"),
    pytest.param(FORGED_THEN_RETURN, {Status.INVALID_RESULT, Status.OK}, _is("real"),
                 id="forged-report-on-report-fd-then-return"),
    pytest.param(forged_report(b'{"status": [], "result": 1}'), {Status.INVALID_RESULT}, None,
                 id="forged-report-unhashable-status"),
    pytest.param(forged_report(b'{"status": {"ok": 1}, "message": "m"}'),
                 {Status.INVALID_RESULT}, None, id="forged-report-dict-status"),
    pytest.param(forged_report(b'{"status": "ok", "result": 1e999}'),
                 {Status.INVALID_RESULT, Status.OK}, _strict_json,
                 id="forged-report-infinite-float"),
    pytest.param(forged_report(b'{"status": "ok", "result": 1, "extra": 2}'),
                 {Status.INVALID_RESULT}, None, id="forged-report-extra-key"),
    pytest.param(forged_report(b'{"status": "main_error", "message": ["x"], "traceback": 1}'),
                 {Status.INVALID_RESULT}, None, id="forged-report-bad-message-types"),
    pytest.param(forged_report(b'{"status": "ok", "result": ' + b"[" * 200000 + b"]" * 200000
                               + b"}"), {Status.INVALID_RESULT, Status.RESULT_TOO_LARGE}, None,
                 id="forged-report-nested-200000"),
    pytest.param(forged_report(b'{"status": "ok", "result": ' + b"7" * 100000 + b"}"),
                 {Status.INVALID_RESULT}, None, id="forged-report-100000-digit-int"),
    pytest.param(forged_report(b'{"status": "ok", "result": "\xff\xfe\xed"}'),
                 {Status.INVALID_RESULT}, None, id="forged-report-invalid-utf8"),
    pytest.param(forged_report(b'{"status": "ok", "result": NaN}'), {Status.INVALID_RESULT},
                 None, id="forged-report-nan-literal"),
    pytest.param("import sys\ndef main():\n    sys.exit(0)\n", {Status.NO_RESULT}, None,
                 id="sys-exit-in-main"),
    pytest.param("import sys\nsys.exit('bye')\ndef main():\n    return 1\n", {Status.NO_RESULT},
                 None, id="sys-exit-at-import"),
    pytest.param("import os\ndef main():\n    os._exit(0)\n", {Status.NO_RESULT}, None,
                 id="os-exit-0"),
    pytest.param("import os\ndef main():\n    os._exit(3)\n", {Status.NO_RESULT}, None,
                 id="os-exit-3"),
    pytest.param("import os\ndef main():\n    os.abort()\n", {Status.NO_RESULT}, None,
                 id="os-abort"),
    pytest.param("def main():\n    return float('nan')\n", {Status.INVALID_RESULT}, None,
                 id="return-nan"),
    pytest.param("def main():\n    return [float('inf')]\n", {Status.INVALID_RESULT}, None,
                 id="return-infinity"),
    pytest.param("def main():\n    return {1, 2}\n", {Status.INVALID_RESULT}, None,
                 id="return-set"),
    pytest.param("def main():\n    return b'bytes'\n", {Status.INVALID_RESULT}, None,
                 id="return-bytes"),
    pytest.param("def main():\n    return {(1, 2): 3}\n", {Status.INVALID_RESULT}, None,
                 id="return-tuple-key"),
    pytest.param(HOSTILE_OBJECTS + "def main():\n    return {'a': [Hostile()]}\n",
                 {Status.INVALID_RESULT}, None, id="return-hostile-repr-str"),
    pytest.param(LYING_CLASS, {Status.INVALID_RESULT}, None, id="return-lying-class"),
    pytest.param(HOSTILE_DICT, {Status.INVALID_RESULT, Status.OK}, None,
                 id="return-dict-subclass-raising-baseexception"),
    pytest.param(HOSTILE_STR_SUBCLASS, {Status.INVALID_RESULT, Status.OK},
                 _is(["text", 7]), id="return-hostile-str-int-subclasses"),
    pytest.param("def main():\n    return 10 ** 5000\n", {Status.INVALID_RESULT}, None,
                 id="return-5000-digit-int"),
    pytest.param(BIG_INT_UNLIMITED, {Status.INVALID_RESULT, Status.RESULT_TOO_LARGE}, None,
                 id="return-100000-digit-int-unlimited"),
    pytest.param("def main():\n    x = []\n    for _ in range(10000):\n        x = [x]\n"
                 "    return x\n", {Status.INVALID_RESULT}, None, id="return-nested-10000"),
    pytest.param("def main():\n    x = {}\n    for _ in range(10000):\n        x = {'k': x}\n"
                 "    return x\n", {Status.INVALID_RESULT}, None, id="return-dict-nested-10000"),
    pytest.param("def main():\n    x = []\n    for _ in range(150):\n        x = [x]\n"
                 "    return x\n", {Status.INVALID_RESULT}, None, id="return-nested-150"),
    pytest.param("def main():\n    return '\\ud800 lone \\udfff'\n",
                 {Status.OK, Status.INVALID_RESULT}, _strict_json, id="return-lone-surrogates"),
    pytest.param("def main():\n    raise KeyboardInterrupt()\n", {Status.MAIN_ERROR}, None,
                 id="raise-keyboard-interrupt"),
    pytest.param("def main():\n    raise GeneratorExit()\n", {Status.MAIN_ERROR}, None,
                 id="raise-generator-exit"),
    pytest.param("class Mine(BaseException):\n    pass\ndef main():\n    raise Mine('x')\n",
                 {Status.MAIN_ERROR}, None, id="raise-custom-baseexception"),
    pytest.param("raise KeyboardInterrupt\ndef main():\n    return 1\n", {Status.MAIN_ERROR},
                 None, id="raise-at-import"),
    pytest.param(HOSTILE_EXCEPTION_STR, {Status.MAIN_ERROR, Status.NO_RESULT}, None,
                 id="raise-exception-with-raising-str"),
    pytest.param(HOSTILE_EXCEPTION_NAME, {Status.MAIN_ERROR, Status.NO_RESULT}, None,
                 id="raise-exception-with-raising-name"),
    pytest.param(HUGE_EXCEPTION, {Status.MAIN_ERROR, Status.RESULT_TOO_LARGE}, None,
                 id="raise-8MB-message"),
    pytest.param(PATCH_JSON_GARBAGE, {Status.INVALID_RESULT}, None,
                 id="monkeypatch-json-dumps-garbage"),
    pytest.param(PATCH_JSON_INFINITY, {Status.INVALID_RESULT, Status.OK}, _strict_json,
                 id="monkeypatch-json-dumps-infinity"),
    pytest.param(PATCH_BUILTINS, CLEAN, None, id="monkeypatch-builtins-and-os-write"),
    pytest.param(PATCH_OS_EXIT, {Status.OK}, _is("real"), id="monkeypatch-os-exit"),
    pytest.param(PATCH_STDOUT, CLEAN, _is("real"), id="monkeypatch-stdout-flush-raises"),
]


@pytest.mark.parametrize("source, expected, check", RESULT_CHANNEL)
def test_result_channel_attack_gives_clean_outcome(sandbox, source, expected, check):
    outcome, elapsed = jailed(sandbox, source)
    assert outcome.status in expected, describe(outcome)
    assert elapsed <= QUICK.timeout_s + TIME_MARGIN_S
    if check is not None:
        check(outcome)


def test_atexit_and_threads_do_not_delay_the_answer(sandbox):
    """atexit handlers (a 100 kB print, an endless loop) and a non-daemon thread never run on."""
    _, baseline = jailed(sandbox, "import atexit, threading, time\ndef main():\n    return 'real'\n")
    outcome, elapsed = jailed(sandbox, ATEXIT_LOOP, Limits(timeout_s=5.0, memory_mb=128))
    assert outcome.status is Status.OK and outcome.result == "real", describe(outcome)
    assert elapsed < baseline + 1.0, \
        f"the answer took {elapsed:.2f} s (a plain run: {baseline:.2f} s)"
    assert "x" * 1000 not in outcome.stdout, "an atexit handler ran after main() returned"


# ------------------------------------------------------------------------------------------
# isolation between runs


def test_tmp_and_shm_files_do_not_survive_a_run(sandbox):
    write = PRELUDE + textwrap.dedent('''
        def main():
            for d in ("/tmp", "/dev/shm", "/tmp/out"):
                write(d + "/left-by-run-1", b"secret")
            return "written"
        ''')
    check = PRELUDE + textwrap.dedent('''
        def main():
            return {"tmp": os.listdir("/tmp"), "shm": os.listdir("/dev/shm"), "out": os.listdir("/tmp/out")}
        ''')
    first, _ = jailed(sandbox, write)
    assert first.status is Status.OK and first.result == "written", describe(first)
    second, _ = jailed(sandbox, check)
    assert second.status is Status.OK, describe(second)
    assert second.result == {"tmp": ["out"], "shm": [], "out": []}, \
        f"run 2 sees run 1's files: {second.result}"


def test_environment_does_not_survive_a_run(sandbox):
    first, _ = jailed(sandbox, "import os\ndef main():\n    os.environ['LEFT_BY_RUN_1'] = 'secret'\n"
                      "    os.putenv('PUT_BY_RUN_1', 'secret')\n    return 1\n")
    assert first.status is Status.OK, describe(first)
    second, _ = jailed(sandbox, "import os\ndef main():\n    return dict(os.environ)\n")
    assert second.status is Status.OK, describe(second)
    assert not {"LEFT_BY_RUN_1", "PUT_BY_RUN_1"} & set(second.result), second.result


DAEMON = '''
import os, time
def main():
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.closerange(0, 1024)
            try:
                import ctypes
                ctypes.CDLL(None).prctl(1, 0, 0, 0, 0)  # PR_SET_PDEATHSIG 0: stay behind
            except Exception:
                pass
            time.sleep(30)
        os._exit(0)
    time.sleep(0.2)
    return "daemon started"
'''


def test_daemon_does_not_outlive_its_run(sandbox):
    outcome, _ = jailed(sandbox, DAEMON)
    assert outcome.status is Status.OK and outcome.result == "daemon started", describe(outcome)
    assert_no_orphans(within_s=1.0)


CONCURRENT_TMP = '''
import os, time
def main():
    with open("/tmp/{mine}", "w") as f:
        f.write("secret")
    time.sleep(0.8)
    return sorted(os.listdir("/tmp"))
'''


def test_concurrent_runs_do_not_share_tmp(sandbox):
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(jailed, sandbox, CONCURRENT_TMP.format(mine=name), QUICK)
                for name in ("run-a", "run-b")]
        outcomes = [future.result()[0] for future in runs]
    for outcome, mine in zip(outcomes, ("run-a", "run-b"), strict=True):
        assert outcome.status is Status.OK, describe(outcome)
        assert outcome.result == sorted([mine, "out"]), f"{mine} sees another run's files: {outcome.result}"


def test_fork_bomb_does_not_starve_a_concurrent_run(sandbox):
    """pids, memory and nofile are per jail: a neighbour's fork bomb cannot block a benign run."""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        bomb = pool.submit(jailed, sandbox, FORK_BOMB, Limits(timeout_s=3.0, memory_mb=128))
        time.sleep(1.0)
        outcome, elapsed = jailed(sandbox, BENIGN, Limits(timeout_s=5.0, memory_mb=64))
        bomb_outcome, _ = bomb.result()
    assert outcome.status is Status.OK and outcome.result == 42, describe(outcome)
    assert bomb_outcome.status is Status.TIMEOUT, describe(bomb_outcome)
    assert_no_orphans()


# ------------------------------------------------------------------------------------------
# load


def test_twelve_cpu_bound_runs_and_a_benign_one(sandbox, record_property):
    cpu_limits = Limits(timeout_s=2.0, memory_mb=64)
    with concurrent.futures.ThreadPoolExecutor(13) as pool:
        hogs = [pool.submit(jailed, sandbox, CPU_LOOP, cpu_limits) for _ in range(12)]
        time.sleep(0.5)
        benign, latency = jailed(sandbox, BENIGN, Limits(timeout_s=5.0, memory_mb=64))
        hog_outcomes = [future.result() for future in hogs]
    record_property("benign_latency_s", round(latency, 3))
    print(f"\nbenign run latency under 12 CPU-bound jails: {latency:.3f} s")
    assert benign.status is Status.OK and benign.result == 42, describe(benign)
    for outcome, elapsed in hog_outcomes:
        assert outcome.status is Status.TIMEOUT, describe(outcome)
        assert elapsed <= cpu_limits.timeout_s + TIME_MARGIN_S, f"a hog ran {elapsed:.1f} s"
    assert_no_orphans()
