"""What the Docker test modules share: the Makefile's variables, the docker CLI, and the
image `make image` builds (the `image` and `plot_image` fixtures, a plugin of tests/conftest.py)."""
import os
import shlex
import socket
import subprocess

import pytest

from tests.support.servers import REPO

BUILD_TIMEOUT_S = 1800
SERVICE_PARTS = ("pysandbox-supervise", "gunicorn", "redis-server", "-m worker", "nginx:")
"""Command-line marks of the service's own long-lived processes in the image
(docker/supervise.py): none of them may ever be killed by a script."""


def make_env() -> dict[str, str]:
    """The environment for a nested make: without the outer make's flags and jobserver."""
    return {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}


def make_var(name: str) -> str:
    """A variable's value exactly as the Makefile defines it."""
    done = subprocess.run(["make", "-s", "--no-print-directory", f"print-{name}"], cwd=REPO,
                          env=make_env(), capture_output=True, text=True, timeout=60)
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


def built(target: str, variable: str) -> str:
    """Run `make <target>` and return the tag the Makefile's `variable` names."""
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        pytest.fail("the docker CLI is not installed: these tests need Docker "
                    "(apt-get install docker.io, or run .ci/run)")
    if info.returncode != 0:
        pytest.fail("the Docker daemon is not reachable (`docker info` failed): start dockerd.\n"
                    + info.stderr)
    name = make_var(variable)
    build = subprocess.run(["make", "--no-print-directory", target], cwd=REPO, env=make_env(),
                           capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    if build.returncode != 0:
        pytest.fail(f"make {target} failed ({build.returncode}):\n"
                    f"{build.stdout[-6000:]}\n{build.stderr[-6000:]}")
    return name


@pytest.fixture(scope="module")
def image() -> str:
    """The image `make image` builds (tag from the Makefile's IMAGE)."""
    return built("image", "IMAGE")


@pytest.fixture(scope="session")
def plot_image() -> str:
    """The variant with matplotlib in the jail that `make image-plot` builds (tag: PLOT_IMAGE),
    built once per session."""
    return built("image-plot", "PLOT_IMAGE")
