"""The API image: built with `make image`, run with the Makefile's DOCKER_RUN_FLAGS.

Everything is read from the Makefile (image name, run flags), never copied, so these tests
check exactly what `make run` and the README tell users to do.

By default the image is one container (docker/supervise.py as PID 1): an embedded
redis-server, PYSANDBOX_WORKERS (2) RQ workers and gunicorn. It must serve sync and async
runs, exit 1 within seconds when any of its parts dies (so Docker or Cloud Run replaces
it), and exit 0 on `docker stop` well within the stop timeout.
"""
import json
import os
import re
import shlex
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parent.parent
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
MAX_IMAGE_BYTES = 300 * 1000 * 1000  # `docker image ls` counts in SI megabytes
BUILD_TIMEOUT_S = 1800
HEALTH_TIMEOUT_S = 60
DEFAULT_WORKERS = 2
"""The image's PYSANDBOX_WORKERS default (docker/supervise.py)."""
EXIT_WITHIN_S = 20
"""How soon the container must exit once one of its parts died (the supervisor's stop
budget is 8 s; redis-server and the workers start in well under a second)."""
DOCKER_STOP_S = 10
"""docker stop's default grace before SIGKILL (Cloud Run allows the same)."""


def _make_env() -> dict[str, str]:
    """The environment for a nested make: without the outer make's flags and jobserver."""
    return {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}


def make_var(name: str) -> str:
    """A variable's value exactly as the Makefile defines it."""
    done = subprocess.run(["make", "-s", "--no-print-directory", f"print-{name}"], cwd=REPO,
                          env=_make_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"make print-{name} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout.strip()


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        pytest.fail(f"docker {shlex.join(args)} failed ({done.returncode}):\n"
                    f"{done.stdout}\n{done.stderr}")
    return done


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def image() -> str:
    """The image `make image` builds (tag from the Makefile's IMAGE)."""
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        pytest.fail("the docker CLI is not installed: these tests need Docker "
                    "(apt-get install docker.io, or run .ci/run)")
    if info.returncode != 0:
        pytest.fail("the Docker daemon is not reachable (`docker info` failed): start dockerd.\n"
                    + info.stderr)
    name = make_var("IMAGE")
    build = subprocess.run(["make", "--no-print-directory", "image"], cwd=REPO, env=_make_env(),
                           capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    if build.returncode != 0:
        pytest.fail(f"make image failed ({build.returncode}):\n"
                    f"{build.stdout[-6000:]}\n{build.stderr[-6000:]}")
    return name


@pytest.fixture(scope="module")
def run_flags() -> list[str]:
    flags = shlex.split(make_var("DOCKER_RUN_FLAGS"))
    assert flags, "DOCKER_RUN_FLAGS is empty"
    return flags


@contextmanager
def running(image: str, run_flags: list[str], *env: str) -> Iterator[tuple[str, str]]:
    """The image run as `make run` runs it (plus `-e` env), on a free port, healthy;
    (container id, base URL). Removed afterwards."""
    port = free_port()
    options = [arg for pair in env for arg in ("-e", pair)]
    started = docker("run", "-d", "-p", f"127.0.0.1:{port}:8080", *options, *run_flags, image)
    container = started.stdout.strip()
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(container, base)
        yield container, base
    finally:
        docker("rm", "-f", container, check=False)


@pytest.fixture(scope="module")
def supervised(image: str, run_flags: list[str]) -> Iterator[tuple[str, str]]:
    """One container for the module's read-only tests: (container id, base URL)."""
    with running(image, run_flags) as found:
        yield found


@pytest.fixture(scope="module")
def service(supervised: tuple[str, str]) -> str:
    """The base URL of the image running as `make run` runs it."""
    return supervised[1]


def container_logs(container: str) -> str:
    logs = docker("logs", container, check=False)
    return f"{logs.stdout[-6000:]}\n{logs.stderr[-8000:]}"


def _wait_healthy(container: str, base: str) -> None:
    deadline, last = time.monotonic() + HEALTH_TIMEOUT_S, "no answer yet"
    while time.monotonic() < deadline:
        state = docker("inspect", "-f", "{{.State.Running}}", container, check=False)
        if state.stdout.strip() != "true":
            last = "the container exited"
            break
        try:
            answer = requests.get(f"{base}/health", timeout=5)
            if answer.status_code == 200:
                return
            last = f"HTTP {answer.status_code}: {answer.text[:500]}"
        except requests.RequestException as exc:
            last = repr(exc)
        time.sleep(0.5)
    logs = docker("logs", container, check=False)
    pytest.fail(f"GET /health never answered 200 ({last}); docker logs:\n"
                f"{logs.stdout[-6000:]}\n{logs.stderr[-6000:]}")


def in_image(image: str, script: str) -> str:
    """Run a shell script in the image (without the entrypoint); its stdout."""
    return docker("run", "--rm", "--entrypoint", "sh", image, "-c", script).stdout


def execute(base: str, script: str) -> dict:
    answer = requests.post(f"{base}/execute", json={"script": script}, timeout=60)
    assert answer.status_code == 200, f"HTTP {answer.status_code}: {answer.text[:2000]}"
    return answer.json()


def test_health(service: str) -> None:
    answer = requests.get(f"{service}/health", timeout=10)
    assert answer.status_code == 200
    assert answer.json()["status"] == "ok"


def test_execute_trivial_script(service: str) -> None:
    body = execute(service, "def main(): return 1")
    assert body["result"] == 1
    assert body["stdout"] == ""


def test_execute_pandas_script(service: str) -> None:
    script = ("import pandas as pd\n"
              "def main():\n"
              "    df = pd.DataFrame({'a': [1, 2, 3], 'b': [10, 20, 30]})\n"
              "    return {'sum': int(df['a'].sum()), 'mean_b': float(df['b'].mean())}\n")
    body = execute(service, script)
    assert body["result"] == {"sum": 6, "mean_b": 20.0}


def test_print_goes_to_stdout_not_result(service: str) -> None:
    body = execute(service, "def main():\n    print('hello from the jail')\n    return [1, 2]\n")
    assert body["result"] == [1, 2]
    assert body["stdout"] == "hello from the jail\n"


def test_jail_limits_in_container(image: str, run_flags: list[str]) -> None:
    """The jail in the container with the Makefile's flags: cgroups where the host has v1,
    and the memory and process limits hold either way."""
    probe = (
        "import json\n"
        "from jail import Limits, host_cgroups, run\n"
        "limits = Limits(timeout_s=5.0, memory_mb=256)\n"
        "bomb = 'def main():\\n    x = bytearray(1024 ** 3)\\n    return len(x)\\n'\n"
        "forks = ('import os, time\\n'\n"
        "         'def main():\\n'\n"
        "         '    n = 0\\n'\n"
        "         '    try:\\n'\n"
        "         '        for _ in range(1000):\\n'\n"
        "         '            if os.fork() == 0:\\n'\n"
        "         '                time.sleep(10)\\n'\n"
        "         '                os._exit(0)\\n'\n"
        "         '            n += 1\\n'\n"
        "         '    except OSError:\\n'\n"
        "         '        pass\\n'\n"
        "         '    return n\\n')\n"
        "fork = run(forks, limits)\n"
        "print(json.dumps({'cgroups': sorted(host_cgroups().available),\n"
        "                  'bomb': run(bomb, limits).status.value,\n"
        "                  'fork': [fork.status.value, fork.result]}))\n"
    )
    done = docker("run", "--rm", *run_flags, "-e", "PYTHONPATH=/app", image,
                  "/opt/venv/bin/python", "-c", probe, timeout=120)
    found = json.loads(done.stdout.strip().splitlines()[-1])
    cgroup_version = docker("info", "-f", "{{.CgroupVersion}}").stdout.strip()
    if cgroup_version == "1":
        assert found["cgroups"] == ["cpu", "memory", "pids"], (found, done.stderr)
    assert found["bomb"] == "memory_limit", (found, done.stderr)
    assert found["fork"][0] == "ok" and found["fork"][1] < 32, (found, done.stderr)


def test_image_has_no_host_ca_certificates(image: str) -> None:
    """The build stage's proxy CA certificates never reach the final image."""
    assert in_image(image, "ls -A /usr/local/share/ca-certificates 2>/dev/null; true").strip() == ""
    every_cert = in_image(
        image, "find / -xdev \\( -name '*.crt' -o -name '*.pem' \\) -type f -exec cat {} + "
               "2>/dev/null; true")
    for host_cert in sorted(HOST_CA_DIR.glob("*.crt")):
        body = re.findall(r"^[A-Za-z0-9+/=]{40,}$", host_cert.read_text(), re.MULTILINE)
        leaked = [line for line in body if line in every_cert]
        assert not leaked, f"{host_cert} is in the image"


def test_image_has_no_compiler_pip_cache_or_apt_lists(image: str) -> None:
    found = in_image(image, (
        "for tool in gcc cc c++ g++ clang ld as make; do"
        "  command -v $tool >/dev/null 2>&1 && echo \"compiler: $tool\"; done;"
        "ls /usr/bin | grep -E '^(x86_64|aarch64)-linux-gnu-(gcc|g\\+\\+)' | sed 's/^/compiler: /';"
        "find / -xdev -type d \\( -path '*/.cache/pip' -o -path '*/pip/_internal' \\) "
        "  -printf 'pip: %p\\n' 2>/dev/null;"
        "find /var/lib/apt/lists -type f ! -name lock -printf 'apt list: %p\\n' 2>/dev/null;"
        "find /var/cache/apt -name '*.deb' -printf 'apt cache: %p\\n' 2>/dev/null; true"))
    assert found.strip() == "", found


def test_image_size(image: str) -> None:
    size = int(docker("image", "inspect", "-f", "{{.Size}}", image).stdout.strip())
    assert size <= MAX_IMAGE_BYTES, f"{image} is {size / 1e6:.0f} MB (limit 300 MB)"
