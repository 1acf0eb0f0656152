"""The Prometheus scrape configuration of docs/operating.md, as written, against the real service: a real
Prometheus (Debian's package) scrapes /metrics with the operator's key; a tenant's key is refused.
"""
import hashlib
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from tests.support.servers import REPO, free_port, gunicorn

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
KEYS = {"prometheus": "prom-" + "k" * 40, "tenant": "tenant-" + "k" * 40}
SCRAPE_WAIT_S = 60


def documented_scrape_config() -> str:
    """The prometheus.yml block of docs/operating.md."""
    text = (REPO / "docs" / "operating.md").read_text()
    found = re.search(r"```yaml\n# prometheus.yml\n(.*?)```", text, re.DOTALL)
    assert found, "docs/operating.md has no prometheus.yml block"
    return found.group(1)


@pytest.fixture(scope="module")
def service() -> Iterator[str]:
    keys = f"prometheus:{hashlib.sha256(KEYS['prometheus'].encode()).hexdigest()}:operator," \
           f"tenant:{hashlib.sha256(KEYS['tenant'].encode()).hexdigest()}"
    with gunicorn({"PYSANDBOX_API_KEYS": keys, "PYSANDBOX_WARM_JAILS": "0"}) as url:
        yield url


@contextmanager
def prometheus(tmp_path: Path, target: str, key: str) -> Iterator[str]:
    """Prometheus with the documented configuration, its target and key file put where this test
    has them; yields its API's base URL."""
    if not Path(PROMETHEUS).exists():
        pytest.fail("no prometheus binary: apt-get install prometheus (.ci/run installs it)")
    key_file = tmp_path / "pysandbox.key"
    key_file.write_text(key + "\n")
    config = documented_scrape_config().replace("/etc/prometheus/pysandbox.key", str(key_file)) \
        .replace("localhost:8080", target)
    (tmp_path / "prometheus.yml").write_text("global:\n  scrape_interval: 1s\n" + config)
    check = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    port = free_port()
    with open(tmp_path / "prometheus.log", "w") as log:
        proc = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def target_state(api: str) -> dict:
    """The pysandbox target once it has been scraped at least once."""
    deadline = time.monotonic() + SCRAPE_WAIT_S
    while time.monotonic() < deadline:
        try:
            targets = requests.get(f"{api}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        except (requests.RequestException, ValueError, KeyError):
            targets = []
        for target in targets:
            if target["labels"].get("job") == "pysandbox" and target["health"] != "unknown":
                return target
        time.sleep(0.5)
    pytest.fail(f"Prometheus never scraped the target in {SCRAPE_WAIT_S} s")


def test_the_documented_scrape_config_reads_metrics_with_the_operators_key(service, tmp_path):
    target = service.removeprefix("http://")
    with prometheus(tmp_path, target, KEYS["prometheus"]) as api:
        state = target_state(api)
        assert state["health"] == "up", state
        answer = requests.get(f"{api}/api/v1/query", params={"query": "pysandbox_run_slots"},
                              timeout=5).json()
        assert answer["status"] == "success" and answer["data"]["result"], answer


def test_a_tenants_key_cannot_scrape(service, tmp_path):
    with prometheus(tmp_path, service.removeprefix("http://"), KEYS["tenant"]) as api:
        state = target_state(api)
        assert state["health"] == "down" and "403" in state["lastError"], state
