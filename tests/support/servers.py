"""Real services for the tests and the benchmark: gunicorn, redis-server, RQ workers."""
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests
from redis import Redis
from redis.exceptions import RedisError

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def gunicorn(env: dict[str, str] | None = None, wait_healthy: bool = True,
             log_path: Path | None = None) -> Iterator[str]:
    """A real gunicorn serving the app on a free port; yields its base URL.

    Its log goes to a file (a pipe nobody reads would fill and block it), shown on failure:
    log_path when given (for tests that read it), else a temporary one.
    """
    port = free_port()
    with open(log_path, "w+") if log_path else tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "gunicorn"), "--config", "api/gunicorn.conf.py",
             "api:create_app()"],
            cwd=REPO, env={**os.environ, "PORT": str(port), **(env or {})},
            stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_up(proc, url, wait_healthy, log)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_up(proc: subprocess.Popen, url: str, wait_healthy: bool, log) -> None:
    """Until /health answers (200, or anything when not wait_healthy); fail with the log."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            if requests.get(f"{url}/health", timeout=5).status_code == 200 or not wait_healthy:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    log.seek(0)
    raise AssertionError(f"gunicorn did not become healthy in 30 s:\n{log.read()[-5000:]}")


@contextmanager
def redis_server(directory: Path, port: int | None = None, *options: str) -> Iterator[str]:
    """A private, throwaway redis-server on loopback (on a free port unless given), with these
    extra options (`--maxmemory`, `160mb`); yields its URL."""
    port = port or free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(directory), *options],
                            stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                Redis.from_url(url).ping()
                break
            except RedisError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextmanager
def workers(redis_url: str, count: int, env: dict[str, str] | None = None,
            log_path: Path | None = None) -> Iterator[list[subprocess.Popen]]:
    """count real RQ workers (their logs appended to log_path, if given); waits until they
    are registered."""
    log = open(log_path, "a") if log_path else subprocess.DEVNULL
    procs = [subprocess.Popen([sys.executable, "-m", "worker"], cwd=REPO,
                              env={**os.environ, "REDIS_URL": redis_url, **(env or {})},
                              stdout=log, stderr=log)
             for _ in range(count)]
    try:
        redis, deadline = Redis.from_url(redis_url), time.monotonic() + 30
        while len(redis.smembers("rq:workers")) < count:
            assert time.monotonic() < deadline, "workers did not register"
            time.sleep(0.1)
        yield procs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
        if not isinstance(log, int):
            log.close()
