"""A/B of two images' fast path on a cgroup v2 host: the test VM (tests/support/vm.py, qemu).

    .venv/bin/python bench/vm_compare.py IMAGE_A IMAGE_B [--rounds 3] [--seconds 5]

Boots the VM with both images, starts each with the Makefile's DOCKER_RUN_FLAGS on a port of
its own (forwarded to this host's loopback), waits until both are healthy, then runs
bench/run.py's --compare over them: interleaved rounds, medians and the ratios B/A. Under qemu's
TCG the absolute times are many times a real host's; the ratios are what it is for (issue 19:
the v2 path moves each sealed child into a cgroup of its own). Run as root, after `make venv`.
"""
import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import compare  # noqa: E402
from tests.support.servers import REPO  # noqa: E402
from tests.support.vm import VM, build_disk  # noqa: E402

GUEST_PORTS = (18080, 18081)
HEALTHY_WITHIN_S = 600


def run_flags() -> list[str]:
    """The Makefile's DOCKER_RUN_FLAGS, exactly."""
    done = subprocess.run(["make", "-s", "print-DOCKER_RUN_FLAGS"], cwd=REPO, capture_output=True,
                          text=True, check=True)
    return shlex.split(done.stdout)


def wait_healthy(url: str) -> None:
    """Until /health answers 200 with every warm jail idle."""
    deadline = time.monotonic() + HEALTHY_WITHIN_S
    while time.monotonic() < deadline:
        try:
            answer = requests.get(f"{url}/health", timeout=10)
            warm = answer.json().get("warm_jails", {})
            if answer.status_code == 200 and warm.get("idle") == warm.get("size"):
                return
        except (requests.RequestException, ValueError):
            pass
        time.sleep(2)
    raise RuntimeError(f"{url} was not healthy within {HEALTHY_WITHIN_S} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs=2, metavar="IMAGE")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        machine = VM(build_disk(), Path(workdir), GUEST_PORTS, args.images)
        try:
            machine.start()
            machine.wait_ssh()
            for image in args.images:  # all loaded first: a docker load starves a starting service
                machine.load_image(image)
            urls = []
            for image, port in zip(args.images, GUEST_PORTS, strict=True):
                machine.ssh(shlex.join(["docker", "run", "-d", "-p", f"{port}:8080", *run_flags(), image]))
                urls.append(f"http://127.0.0.1:{machine.ports[port]}")
                try:  # one at a time: under TCG two starting at once may miss their start-up bounds
                    wait_healthy(urls[-1])
                except RuntimeError:
                    logs = machine.ssh(f"docker logs --tail 80 $(docker ps -aqf publish={port})",
                                       check=False)
                    print(logs.stdout[-6000:], logs.stderr[-3000:])
                    raise
            print("cgroup v2 VM (qemu " + machine.accel + "): " + ", ".join(
                f"{url} = {image}" for url, image in zip(urls, args.images, strict=True)))
            compare(urls, args.seconds, args.rounds)
        finally:
            machine.stop()


if __name__ == "__main__":
    main()
