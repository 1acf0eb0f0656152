"""The image with extra jail packages (`make image-plot`: matplotlib via JAIL_PACKAGES): a plot
saved under out/ comes back as a PNG through the API, without matplotlib rebuilding its font
cache in the run, and the default image stays without it and within its size."""
import base64
import shlex
import time
from typing import Any

import pytest
import requests

from tests.image.test_docker import MAX_IMAGE_BYTES
from tests.support.images import docker, free_port, make_var

pytestmark = pytest.mark.docker

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOT = """
import matplotlib
import matplotlib.pyplot as plt
def main(input):
    fig, ax = plt.subplots()
    ax.plot(input["x"], [v * v for v in input["x"]], label="x²")
    ax.set_title("squares")
    ax.legend()
    fig.savefig("out/plot.png")
    return matplotlib.get_backend()
"""


def serve(tag: str, *env: str):
    port = free_port()
    options = [arg for pair in env for arg in ("-e", pair)]
    container = docker("run", "-d", "-p", f"127.0.0.1:{port}:8080", *options,
                       *shlex.split(make_var("DOCKER_RUN_FLAGS")), tag).stdout.strip()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base}/health", timeout=2).status_code == 200:
                return container, base
        except requests.RequestException:
            pass
        time.sleep(0.5)
    logs = docker("logs", container, check=False)
    docker("rm", "-f", container, check=False)
    pytest.fail(f"{tag} never became healthy:\n{logs.stdout[-3000:]}\n{logs.stderr[-3000:]}")


@pytest.fixture(scope="module", params=["warm", "one-off"])
def plot_service(request: pytest.FixtureRequest, plot_image: str):  # noqa: F811
    """The plot image serving sync runs in warm jails, or (PYSANDBOX_WARM_JAILS=0) one-off ones."""
    container, base = serve(plot_image, "PYSANDBOX_WORKERS=0",
                            f"PYSANDBOX_WARM_JAILS={0 if request.param == 'one-off' else 2}")
    yield base
    docker("rm", "-f", container, check=False)


def test_a_plot_comes_back_as_a_png(plot_service: str) -> None:
    body: dict[str, Any] = {"script": PLOT, "input": {"x": [1, 2, 3, 4]}, "timeout": 20}
    response = requests.post(f"{plot_service}/execute", json=body, timeout=60)
    assert response.status_code == 200, response.text[:2000]
    answer = response.json()
    assert answer["result"].lower() == "agg" and answer["files_truncated"] is False
    [plot] = answer["files"]
    data = base64.b64decode(plot["content"])
    assert plot["name"] == "plot.png" and plot["media_type"] == "image/png"
    assert data.startswith(PNG_MAGIC) and plot["size"] == len(data) > 5000
    assert "font cache" not in answer["stderr"] and "Matplotlib" not in answer["stderr"], answer["stderr"]


def test_the_default_image_has_no_matplotlib_and_stays_small(image: str, plot_image: str) -> None:  # noqa: F811
    found = docker("run", "--rm", "--entrypoint", "ls", image, "/opt/pysandbox/jail-site").stdout.split()
    assert "numpy" in found and "matplotlib" not in found and ".matplotlib" not in found
    sizes = {tag: int(docker("image", "inspect", "-f", "{{.Size}}", tag).stdout)
             for tag in (image, plot_image)}
    print(f"image sizes: {', '.join(f'{tag} {size / 1e6:.0f} MB' for tag, size in sizes.items())}")
    assert sizes[image] <= MAX_IMAGE_BYTES < sizes[plot_image]
