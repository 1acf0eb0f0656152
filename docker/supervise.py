#!/usr/bin/python3 -I
"""PID 1 of the all-in-one container: redis-server, N RQ workers, gunicorn and nginx, as one unit.

    pysandbox-supervise            (the image's CMD; run after docker/entrypoint.sh)
    pysandbox-supervise api        (docker-compose's api service: nginx and gunicorn only)
    pysandbox-supervise redis      (docker-compose's redis service: see below)

All-in-one (the default): starts
  1. redis-server on a unix socket in SOCKET_DIR (no TCP listener at all), protected by a
     password generated now. It keeps its data in memory only (it lives and dies with the
     container), unless a volume is mounted at DATA_DIR: then it writes an append-only file
     there (fsync every second) and the jobs outlive the container. The jail never sees it:
     it has no /run or /var mount and no network, and its environment is rebuilt from
     scratch (keep_env: false).
  2. once redis answers: $PYSANDBOX_WORKERS (default 2) `python -m worker` processes and
     gunicorn, with REDIS_URL (socket path + password) in their environment only.
     With PYSANDBOX_WORKERS=0 there is no redis and no worker: gunicorn alone, sync only.
  3. nginx on $PORT, in front of gunicorn, which listens only on a unix socket in HTTP_DIR
     (root and nginx's workers, www-data, may use it; nothing else in the container). Its
     config is docker/nginx.conf, rendered with values from the service's settings (`python
     -m shared.proxy`, before the workers and gunicorn start) into NGINX_DIR, which also holds
     its pid and temporary files. nginx computes the client's address
     (PYSANDBOX_TRUSTED_PROXIES) and sends gunicorn only that, as the one X-Forwarded-For
     entry gunicorn is told to trust.
Sync requests are still run by gunicorn itself; ?async=1 jobs by the workers. All of them
count into one prometheus_client multiprocess directory, METRICS_DIR, made empty at start,
which gunicorn's GET /metrics reads.

SIGTERM/SIGINT stop everything, within $PYSANDBOX_STOP_TIMEOUT_S (default 8 s, under the
10 s that `docker stop` and Cloud Run allow): nginx first, with SIGQUIT (its graceful stop: it
stops accepting and answers what it has in flight, through gunicorn), and the workers (each
finishes its job); gunicorn once nginx has gone (nothing can reach it then: had it stopped
first, a request nginx still held would find no socket); redis last; SIGKILL for what
outlives its share. A requested stop exits 0 (not 143): it is no failure. If any
child ends on its own, even with status 0, the others are stopped the same way and the
supervisor exits 1, so that Docker (--restart) or Cloud Run replaces the container rather
than leave it half alive.

As PID 1 it also reaps orphans (e.g. what a killed worker leaves behind).

`api` mode (compose): nginx and gunicorn as above, without redis, workers or the shared metrics
directory, as whatever user the container runs as (compose: uid 10001, read-only root
filesystem): the run directories are then in $TMPDIR (compose: a tmpfs), nginx's workers run
as that same user, and REDIS_URL is used as given.

`redis` mode (compose): exec redis-server on 0.0.0.0:6379 with the password from
$REDIS_PASSWORD, never on a command line (the config is fed on stdin), with its append-only
file in DATA_DIR (compose mounts a named volume there).

Logs: every line the container writes is one JSON object with `severity`, `message`, `time` and
`logger` (PYSANDBOX_LOG_FORMAT=text: readable lines instead). gunicorn and the workers write theirs
(shared/logs.py) and nginx its access log (docker/nginx.conf); the supervisor writes its own so, and
relays redis-server's output and nginx's error log through a pipe each, one JSON line per line they
write, with their level as the severity (RELAYED). Standard library only.
"""
import json
import os
import pwd
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

SOCKET_DIR = "/run/pysandbox"
SOCKET = f"{SOCKET_DIR}/redis.sock"
DATA_DIR = "/var/lib/redis"
"""Where Redis keeps its append-only file: Debian's redis-server home, owned by redis."""
METRICS_DIR = "/run/pysandbox-metrics"
REDIS_USER = "redis"
REDIS_READY_S = 15.0
VENV_PYTHON = "/opt/venv/bin/python"
APP_DIR = "/app"
GUNICORN = ["/opt/venv/bin/gunicorn", "--config", "api/gunicorn.conf.py"]
GUNICORN_APP = "api:create_app()"
WORKER = [VENV_PYTHON, "-m", "worker"]
REDIS_MEMORY_MB = 512
"""Redis's maxmemory unless $PYSANDBOX_REDIS_MEMORY_MB says otherwise: the same variable and
default as the API's storage budget (shared/settings.py), which fits inside it."""
NGINX = "/usr/sbin/nginx"
NGINX_TEMPLATE = "/usr/local/share/pysandbox/nginx.conf"
NGINX_USER = "www-data"
"""nginx's workers, when it starts as root: not root, and not 65534 (the jail's uid)."""
HTTP_DIR = "pysandbox-http"
"""gunicorn's socket's directory (under /run as root, else under $TMPDIR)."""
NGINX_DIR = "pysandbox-nginx"
"""nginx's config, pid and temporary files (the same; its workers write request bodies and
answers too large for their buffers there)."""
PROXY_CONFIG_TIMEOUT_S = 180
"""How long `python -m shared.proxy` may take: a Python start with pydantic (0.3 s here). It
runs before the workers and gunicorn start: beside them, in the cgroup v2 VM tier (qemu without
KVM), the app's imports that it once made took over 180 s."""
REDIS_SHARE_S = 1.5
"""Of the stop budget, what is kept for redis after the others."""
GUNICORN_SHARE_S = 2.5
"""Of the rest, what is kept for gunicorn after nginx: it has nothing in flight by then, but its
worker's exit (warm jails) took up to 2.5 s on a loaded 2-core machine."""


TEXT_LOGS = os.environ.get("PYSANDBOX_LOG_FORMAT", "").strip().lower() == "text"
"""PYSANDBOX_LOG_FORMAT=text: plain lines, as shared/logs.py writes them then."""
REDIS_LINE = re.compile(r"\d+:[XCSM] \d+ \w+ \d+ [\d:.]+ ([.*#-]) (.*)")
"""redis-server's log line: pid:role date time level message (level: . - * #)."""
NGINX_LINE = re.compile(r"(?:\d{4}/\d\d/\d\d [\d:]+|nginx:) \[(\w+)\] (.*)")
"""nginx's error log line (and its start-up complaints): date time [level] message."""
REDIS_SEVERITY = {".": "DEBUG", "-": "DEBUG", "*": "INFO", "#": "WARNING"}
NGINX_SEVERITY = {"debug": "DEBUG", "info": "INFO", "notice": "NOTICE", "warn": "WARNING", "error": "ERROR",
                  "crit": "CRITICAL", "alert": "ALERT", "emerg": "EMERGENCY"}


def json_line(severity: str, logger: str, message: str) -> str:
    """One log line as shared/logs.py writes it in JSON (Cloud Logging's severity names)."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return json.dumps({"severity": severity, "logger": logger, "message": message, "time": now})


def log(message: str, severity: str = "INFO") -> None:
    """A line of the supervisor's own, on stderr."""
    line = f"supervise: {message}" if TEXT_LOGS else json_line(severity, "supervise", message)
    print(line, file=sys.stderr, flush=True)


def parsed(pattern: re.Pattern[str], severities: dict[str, str]) -> Callable[[str], tuple[str, str]]:
    """A line of a child's output as (severity, message) by `pattern`'s level and message groups;
    a line it does not match is kept whole, as a WARNING (what they print unformatted is a
    complaint: a config error, a crash)."""
    def parse(line: str) -> tuple[str, str]:
        found = pattern.fullmatch(line)
        if found is None:
            return "WARNING", line
        return severities.get(found[1], "WARNING"), found[2]

    return parse


RELAYED: dict[str, Callable[[str], tuple[str, str]]] = {
    "redis": parsed(REDIS_LINE, REDIS_SEVERITY), "nginx": parsed(NGINX_LINE, NGINX_SEVERITY)}
"""The children whose output the supervisor rewrites as JSON lines (unless TEXT_LOGS): redis-server
(stdout, where it logs) and nginx (stderr, its error log; its access log is JSON already)."""


def env_int(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name, "").strip()
    try:
        value = int(raw) if raw else default
    except ValueError:
        log(f"{name} must be an integer, not {raw!r}", "ERROR")
        raise SystemExit(1) from None
    if value < minimum:
        log(f"{name} must be >= {minimum}, not {value}", "ERROR")
        raise SystemExit(1)
    return value


def redis_config(password: str, persist: bool, **settings: str) -> str:
    """redis.conf text: an append-only file in DATA_DIR (fsync every second) or no persistence
    at all, the password, $PYSANDBOX_REDIS_MEMORY_MB at most, then `settings`."""
    quoted = password.replace("\\", "\\\\").replace('"', '\\"')
    durability = ["appendonly yes", "appendfsync everysec", f"dir {DATA_DIR}"] if persist else \
        ["appendonly no"]
    lines = ['save ""', *durability, f'requirepass "{quoted}"',
             # Bounded: when full, writes fail (the API answers 503) instead of growing.
             f"maxmemory {env_int('PYSANDBOX_REDIS_MEMORY_MB', REDIS_MEMORY_MB, minimum=1)}mb",
             "maxmemory-policy noeviction"]
    lines += [f"{name} {value}" for name, value in settings.items()]
    return "\n".join(lines) + "\n"


def exit_text(status: int) -> str:
    """A waitpid status as words."""
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    user: str | None = None
    stdin_text: str | None = None
    stop_signal: signal.Signals | None = None
    """What asks it to stop, when not the signal the supervisor got (nginx: SIGQUIT)."""
    pid: int = 0
    status: int | None = None
    signalled: set = field(default_factory=set)
    output: IO[bytes] | None = None
    """The read end of the pipe its output comes through, when relayed (RELAYED)."""
    partial: bytes = b""
    """Relayed output past its last newline."""

    @property
    def running(self) -> bool:
        return self.pid > 0 and self.status is None

    def start(self) -> None:
        # Its own session: a terminal's Ctrl-C reaches the supervisor only, which forwards it
        # once; and SIGKILL can take the child's whole process group.
        extra: dict[str, Any] = {}
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            extra = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        if self.name == "redis" and not TEXT_LOGS:  # it logs to stdout
            extra.update(stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        elif self.name == "nginx" and not TEXT_LOGS:  # its error log (the access log is JSON)
            extra.update(stderr=subprocess.PIPE)
        proc = subprocess.Popen(self.argv, env=self.env, start_new_session=True, close_fds=True,
                                stdin=subprocess.PIPE if self.stdin_text is not None else
                                subprocess.DEVNULL, **extra)
        self.output = proc.stdout if self.name == "redis" else proc.stderr
        if self.output is not None:
            os.set_blocking(self.output.fileno(), False)
        if self.stdin_text is not None and proc.stdin is not None:
            proc.stdin.write(self.stdin_text.encode())
            proc.stdin.close()
        # The pid is reaped by Supervisor.reap() (waitpid(-1) as PID 1), never by Popen.
        proc.returncode = 0  # so Popen's own bookkeeping never waits on this pid
        self.pid = proc.pid
        log(f"started {self.name} (pid {self.pid})")

    def relay(self) -> bool:
        """Write what its pipe holds now as JSON lines; close the pipe at its end. False when
        there was nothing to read."""
        if self.output is None:
            return False
        try:
            data = os.read(self.output.fileno(), 65536)
        except BlockingIOError:
            return False
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop() if data else b""
        if not data and lines[-1] == b"":
            lines.pop()
        for raw in lines:
            line = raw.decode(errors="replace").rstrip()
            if line:
                severity, message = RELAYED[self.name](line)
                print(json_line(severity, self.name, message), flush=True)
        if not data:  # end of file: it has exited (or closed its output)
            self.output.close()
            self.output = None
        return True

    def signal(self, sig: signal.Signals, group: bool = False) -> None:
        if not self.running:
            return
        self.signalled.add(sig)
        try:
            if group:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)
        except ProcessLookupError:
            pass


class Supervisor:
    def __init__(self) -> None:
        self.children: list[Child] = []
        self.stop_signal: signal.Signals | None = None
        self.failed: str | None = None
        self.wake_r, wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake the select() below
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop)

    def _on_stop(self, signum: int, _frame) -> None:
        if self.stop_signal is None:
            self.stop_signal = signal.Signals(signum)

    # -- waiting and reaping ---------------------------------------------------------------
    def reap(self) -> None:
        """Collect every exited process: our children, and orphans handed to PID 1."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for child in self.children:
                if child.pid == pid and child.status is None:
                    child.status = status
                    self._exited(child)

    def _exited(self, child: Child) -> None:
        assert child.status is not None, "reap() sets it first"
        how = exit_text(child.status)
        if self.stop_signal is None and self.failed is None:
            self.failed = f"{child.name} {how}"
            log(f"{child.name} (pid {child.pid}) {how} unexpectedly; stopping the container", "ERROR")
        elif signal.SIGKILL in child.signalled:
            log(f"{child.name} (pid {child.pid}) did not stop in time: {how}", "WARNING")
        else:
            log(f"{child.name} (pid {child.pid}) {how}")

    def pause(self, timeout_s: float) -> None:
        """Sleep until a signal arrives (SIGCHLD included), a relayed child writes, or timeout_s
        passes; relay what they wrote, then reap."""
        relayed = {c.output.fileno(): c for c in self.children if c.output is not None}
        if timeout_s > 0:
            try:
                ready, _, _ = select.select([self.wake_r, *relayed], [], [], timeout_s)
            except InterruptedError:
                ready = []
            for fd in ready:
                if fd in relayed:
                    relayed[fd].relay()
            try:
                while os.read(self.wake_r, 512):
                    pass
            except BlockingIOError:
                pass
        self.reap()

    @property
    def interrupted(self) -> bool:
        return self.stop_signal is not None or self.failed is not None

    def wait_for(self, children: list[Child], deadline: float) -> bool:
        """Until all of children have exited or the deadline; True if they all have."""
        while any(c.running for c in children):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.pause(min(left, 0.5))
        return True

    # -- the all-in-one container ---------------------------------------------------------
    def start_redis(self, env: dict[str, str]) -> tuple[Child, str]:
        password = secrets.token_hex(32)
        try:
            user = pwd.getpwnam(REDIS_USER).pw_name
        except KeyError:
            user = None
        os.makedirs(SOCKET_DIR, mode=0o700, exist_ok=True)
        os.chmod(SOCKET_DIR, 0o700)
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(SOCKET_DIR, entry.pw_uid, entry.pw_gid)
        if os.path.lexists(SOCKET):
            os.unlink(SOCKET)
        persist = os.path.ismount(DATA_DIR)
        if persist:
            if user is not None:  # a host directory bind-mounted here may belong to anyone
                entry = pwd.getpwnam(user)
                os.chown(DATA_DIR, entry.pw_uid, entry.pw_gid)
            log(f"redis keeps its jobs in {DATA_DIR} (a mounted volume): append-only, fsync every second")
        else:
            log(f"redis keeps its jobs in memory only; mount a volume at {DATA_DIR} to keep them")
        # Root's clients (gunicorn, workers) reach the redis-owned 0700 socket through
        # CAP_DAC_OVERRIDE, which Docker grants by default; nothing else in the container can.
        config = redis_config(password, persist, port="0", unixsocket=SOCKET, unixsocketperm="700",
                              loglevel="warning", **({} if persist else {"dir": SOCKET_DIR}))
        redis = Child("redis", ["redis-server", "-"], env, user=user, stdin_text=config)
        self.children.append(redis)
        self.start(redis)
        return redis, password

    def start(self, child: Child) -> None:
        try:
            child.start()
        except OSError as exc:
            self.failed = f"{child.name} could not start: {exc}"
            log(self.failed, "ERROR")

    def wait_redis(self, redis: Child, password: str) -> bool:
        deadline, last = time.monotonic() + REDIS_READY_S, "no answer"
        while not self.interrupted and time.monotonic() < deadline:
            ok, last = redis_ping(SOCKET, password)
            if ok:
                log("redis is ready")
                return True
            self.pause(0.1)
        if not self.interrupted:
            self.failed = f"redis did not answer within {REDIS_READY_S:.0f} s ({last})"
            log(self.failed, "ERROR")
        return False

    def run(self, all_in_one: bool = True) -> int:
        """The all-in-one container, or (all_in_one=False) compose's api: nginx + gunicorn."""
        workers = env_int("PYSANDBOX_WORKERS", 2) if all_in_one else 0
        budget_s = env_int("PYSANDBOX_STOP_TIMEOUT_S", 8, minimum=2)
        nginx_values = {
            "PORT": env_int("PORT", 8080, minimum=1),
            "FORWARDED_FOR_RULE": forwarded_for_rule(env_int("PYSANDBOX_TRUSTED_PROXIES", 0)),
            # nginx's graceful stop ends in time for gunicorn's and redis's shares of the budget.
            "STOP_TIMEOUT_MS": max(500, int((budget_s - REDIS_SHARE_S - GUNICORN_SHARE_S) * 1000))}
        env, ready = dict(os.environ), True
        if all_in_one:
            env["PROMETHEUS_MULTIPROC_DIR"] = METRICS_DIR
            shutil.rmtree(METRICS_DIR, ignore_errors=True)  # a restarted container's old counts
            os.makedirs(METRICS_DIR, mode=0o700)
        if workers:
            if env.get("REDIS_URL"):
                log("REDIS_URL is ignored: this container runs its own redis", "WARNING")
            redis, password = self.start_redis(env)
            env = {**env, "REDIS_URL": f"unix://:{password}@{SOCKET}?db=0"}
            ready = self.wait_redis(redis, password)
        elif all_in_one:
            log("PYSANDBOX_WORKERS=0: no redis and no workers, sync runs only")
            env.pop("REDIS_URL", None)
        if ready:
            self.start_front(env, workers, nginx_values)
        while not self.interrupted:
            self.pause(5.0)
        if self.stop_signal is not None and self.failed is None:
            log(f"{self.stop_signal.name}: stopping (within {budget_s} s)")
        self.shutdown(self.stop_signal or signal.SIGTERM, time.monotonic() + budget_s)
        for child in self.children:  # what the relayed children wrote last
            while child.relay():
                pass
        if self.failed is not None:
            log(f"exit 1: {self.failed}", "ERROR")
            return 1
        log("stopped")
        return 0

    def start_front(self, env: dict[str, str], workers: int, nginx_values: dict[str, object]) -> None:
        """nginx's config (first: on a slow host, a Python start beside the service's own took
        minutes), then the workers and gunicorn, then nginx in front of gunicorn."""
        http_dir = run_dir(HTTP_DIR, group=NGINX_USER)
        upstream = f"{http_dir}/gunicorn.sock"
        if os.path.lexists(upstream):
            os.unlink(upstream)
        try:
            config = write_nginx_config(env, {**nginx_values, "UPSTREAM_SOCKET": upstream})
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            self.failed = f"nginx's config could not be made: {exc}"
            log(self.failed, "ERROR")
            return
        for n in range(1, workers + 1):
            self.children.append(Child(f"worker-{n}", WORKER, env))
        # nginx sends gunicorn one X-Forwarded-For entry, the client's address it computed.
        gunicorn_env = {**env, "PYSANDBOX_TRUSTED_PROXIES": "1"}
        self.children.append(Child("gunicorn", [*GUNICORN, "--bind", f"unix:{upstream}", GUNICORN_APP],
                                   gunicorn_env))
        nginx = Child("nginx", [NGINX, "-e", "stderr", "-c", config], env, stop_signal=signal.SIGQUIT)
        self.children.append(nginx)
        for child in self.children:
            if child.pid == 0 and not self.interrupted:
                self.start(child)
        parts = ["redis", f"{workers} worker(s)"] if workers else []
        log(f"running: {' + '.join([*parts, 'gunicorn', 'nginx'])}")

    def shutdown(self, sig: signal.Signals, deadline: float) -> None:
        """nginx (gracefully) and the workers first, then gunicorn once nginx has gone, then
        redis; SIGKILL for what outlives its share."""
        named = {name: [c for c in self.children if c.name.startswith(name)]
                 for name in ("nginx", "worker", "gunicorn", "redis")}
        front = deadline - REDIS_SHARE_S
        stages = ((named["nginx"] + named["worker"], named["nginx"], front - GUNICORN_SHARE_S),
                  (named["gunicorn"], named["gunicorn"] + named["worker"], front),
                  (named["redis"], named["redis"], deadline))
        for signalled, awaited, until in stages:
            for child in signalled:
                child.signal(child.stop_signal or sig)
            if not self.wait_for(awaited, until):
                for child in awaited:
                    child.signal(signal.SIGKILL, group=True)
                self.wait_for(awaited, time.monotonic() + 2)


def run_dir(name: str, group: str | None = None) -> str:
    """A directory for the service's own use: under /run, owned by root (with `group`
    allowed in), as root; else under $TMPDIR, the running user's only."""
    if os.geteuid() != 0:
        path = os.path.join(tempfile.gettempdir(), name)
        os.makedirs(path, mode=0o700, exist_ok=True)
        return path
    path = f"/run/{name}"
    os.makedirs(path, mode=0o750, exist_ok=True)
    os.chown(path, 0, pwd.getpwnam(group).pw_gid if group else 0)
    os.chmod(path, 0o750 if group else 0o700)
    return path


def nginx_settings(env: dict[str, str]) -> dict[str, int]:
    """What nginx takes from the service's settings (`python -m shared.proxy`). Not counted in the
    metrics directory: the service's metrics, imported there, would leave a dead process's files."""
    env = {name: value for name, value in env.items() if name != "PROMETHEUS_MULTIPROC_DIR"}
    done = subprocess.run([VENV_PYTHON, "-m", "shared.proxy"], cwd=APP_DIR, env=env, capture_output=True,
                          text=True, timeout=PROXY_CONFIG_TIMEOUT_S)
    if done.returncode != 0:
        raise ValueError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else
                         f"python -m shared.proxy exited with status {done.returncode}")
    return json.loads(done.stdout)


def forwarded_for_rule(trusted: int) -> str:
    """nginx map entry: the entry of X-Forwarded-For that the outermost of `trusted` proxies
    added (the trusted-th from the right); none when no proxy is trusted (the peer's address)."""
    if not trusted:
        return "# PYSANDBOX_TRUSTED_PROXIES=0: the peer's address, always"
    return rf'"~(?:^|,)\s*(?<addr>[^,\s]+)\s*(?:,[^,]*){{{trusted - 1}}}$" $addr;'


def write_nginx_config(env: dict[str, str], values: dict[str, object]) -> str:
    """docker/nginx.conf with its placeholders filled in (`values`, the settings', and what
    depends on who runs it), written to its run directory; the path."""
    directory = run_dir(NGINX_DIR, group=NGINX_USER)  # its workers write temporary files there
    text_log = env.get("PYSANDBOX_LOG_FORMAT", "").strip().lower() == "text"
    values = {**values, **nginx_settings(env), "RUN_DIR": directory,
              "USER": f"user {NGINX_USER};" if os.geteuid() == 0 else "# not root: workers run as this user",
              "ACCESS_LOG_FORMAT": "pysandbox_text" if text_log else "pysandbox_json"}
    with open(NGINX_TEMPLATE) as template:
        text = fill_placeholders(template.read(), values)
    path = f"{directory}/nginx.conf"
    with open(path, "w") as out:
        out.write(text)
    return path


def fill_placeholders(text: str, values: dict[str, object]) -> str:
    """Each {{NAME}} replaced by values[NAME] (a form nginx's syntax never uses: $name is its own);
    ValueError for a name without a value."""
    def fill(found: re.Match) -> str:
        if found[1] not in values:
            raise ValueError(f"{NGINX_TEMPLATE}: no value for {found[0]}")
        return str(values[found[1]])

    return re.sub(r"\{\{(\w+)\}\}", fill, text)


def redis_ping(path: str, password: str) -> tuple[bool, str]:
    """AUTH then PING on a unix socket, in RESP; (True, "") on +PONG."""
    def command(*words: str) -> bytes:
        out = [f"*{len(words)}\r\n".encode()]
        for word in words:
            data = word.encode()
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        return b"".join(out)

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(path)
            sock.sendall(command("AUTH", password) + command("PING"))
            answer = b""
            while answer.count(b"\r\n") < 2:
                data = sock.recv(256)
                if not data:
                    break
                answer += data
    except OSError as exc:
        return False, f"{type(exc).__name__}: {exc.strerror or exc}"
    if answer.startswith(b"+OK\r\n+PONG\r\n"):
        return True, ""
    return False, answer.decode(errors="replace").strip()[:200]


def exec_redis_for_compose() -> None:
    """Replace this process by redis-server on TCP 6379, password from $REDIS_PASSWORD."""
    password = os.environ.get("REDIS_PASSWORD", "")
    if not password:
        log("redis mode needs REDIS_PASSWORD", "ERROR")
        raise SystemExit(1)
    # protected-mode only guards password-less servers; bind all: compose's network only.
    config = redis_config(password, True, bind="0.0.0.0 -::*", port="6379")
    read, write = os.pipe()
    os.write(write, config.encode())  # far below a pipe's buffer: never blocks
    os.close(write)
    os.dup2(read, 0)
    os.close(read)
    env = {k: v for k, v in os.environ.items() if k != "REDIS_PASSWORD"}
    os.execvpe("redis-server", ["redis-server", "-"], env)


def main(argv: list[str]) -> int:
    if argv[1:] == ["redis"]:
        exec_redis_for_compose()
    if argv[1:] not in ([], ["api"]):
        print(__doc__, file=sys.stderr)
        return 2
    if os.getpid() != 1:
        log(f"note: not PID 1 (pid {os.getpid()}); orphans are reaped by someone else")
    return Supervisor().run(all_in_one=not argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
