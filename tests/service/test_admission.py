"""Admission by memory through the real service (gunicorn, RQ workers, nsjail): runs start only
while their memory limits fit.

The services here get their budget from PYSANDBOX_MEMORY_MB (what an operator sets where the
cgroup's limit is not the service's to use) and a ledger of their own, so that the budget is
exact and no other test's service shares it.
"""
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from api import create_app
from jail import host_cgroups
from jail.admission import BASE_MB, standing_bytes
from jail.limits import MIB
from jail.watchdog import SLACK_MB
from tests.support.servers import gunicorn, redis_server, workers

SLACK = 0 if "memory" in host_cgroups().available else SLACK_MB
"""What each run reserves past its limit on this host: the watchdog's slack without cgroups."""
STANDING_MB = standing_bytes(1) // MIB
"""One process with one warm jail: every service here."""
ONE_RUN_MB = BASE_MB + STANDING_MB + 256 + SLACK + 100
"""Room for one run at 256 MB (and 100 MB to spare), never two."""
SLEEPER = "import time\ndef main():\n    time.sleep(1.5)\n    return 1"


def service_env(tmp_path: Path, memory_mb: int, **extra: str) -> dict[str, str]:
    return {"PYSANDBOX_MEMORY_MB": str(memory_mb), "PYSANDBOX_MEMORY_LEDGER": str(tmp_path / "ledger"),
            "PYSANDBOX_WARM_JAILS": "1", "PYSANDBOX_QUEUE_WAIT_S": "30", **extra}


def slot_wait_s(answer: requests.Response) -> float:
    """The Server-Timing `slot` the service reports: how long the run waited to start."""
    timing = answer.headers["Server-Timing"]
    assert timing.startswith("slot;dur="), timing
    return float(timing.removeprefix("slot;dur=")) / 1000


def test_health_shows_the_budget_it_admits_against(tmp_path):
    with gunicorn(service_env(tmp_path, ONE_RUN_MB, PYSANDBOX_MAX_MEMORY_MB="256")) as url:
        memory = requests.get(f"{url}/health", timeout=10).json()["memory"]
    assert memory["total_bytes"] == ONE_RUN_MB * MIB and memory["source"] == "PYSANDBOX_MEMORY_MB"
    assert memory["base_bytes"] == BASE_MB * MIB and memory["standing_bytes"] == STANDING_MB * MIB
    assert memory["runs"] == 0 and memory["runs_bytes"] == 0
    assert memory["free_bytes"] == (256 + SLACK + 100) * MIB
    assert memory["largest_run_bytes"] == (256 + SLACK) * MIB
    assert "warning" not in memory, memory


def test_a_run_that_does_not_fit_waits_for_the_memory_of_another(tmp_path):
    """Two runs of 256 MB at once where only one fits: both succeed, one after the other."""
    with gunicorn(service_env(tmp_path, ONE_RUN_MB)) as url:
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda _: requests.post(
                f"{url}/execute", json={"script": SLEEPER, "memory_mb": 256}, timeout=60), range(2)))
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    waits = sorted(slot_wait_s(a) for a in answers)
    assert waits[1] >= 1.0, f"the second run started while the first held its memory: {waits}"


def test_a_run_that_can_never_fit_is_refused_at_once(tmp_path):
    """A limit larger than what is left beside the service: 503 memory_unavailable, no retry
    advice; /health warns that the largest limit cannot fit."""
    with gunicorn(service_env(tmp_path, ONE_RUN_MB)) as url:
        health = requests.get(f"{url}/health", timeout=10).json()
        answer = requests.post(f"{url}/execute", json={"script": SLEEPER, "memory_mb": 512}, timeout=30)
        still = requests.post(f"{url}/execute", json={"script": "def main(): return 2"}, timeout=30)
    assert "cannot fit" in health["memory"]["warning"], health["memory"]
    assert health["status"] == "ok"
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "memory_unavailable", answer.text
    assert "Retry-After" not in answer.headers
    assert (still.status_code, still.json()["result"]) == (200, 2)


def test_a_worker_admits_its_jobs_by_memory_too(tmp_path):
    """A worker with no room for a 512 MB run ends such a job failed, memory_unavailable (503
    when a sync request waits on it); a 256 MB job runs."""
    with redis_server(tmp_path) as redis_url, workers(
            redis_url, 1, service_env(tmp_path, ONE_RUN_MB)):
        app = create_app({"REDIS_URL": redis_url, "EXECUTE_VIA_QUEUE": True, "QUEUE_WAIT_S": 30.0})
        client = app.test_client()
        big = client.post("/execute", json={"script": SLEEPER, "memory_mb": 512})
        small = client.post("/execute", json={"script": "def main(): return 3", "memory_mb": 256})
    assert big.status_code == 503, big.get_json()
    assert big.get_json()["error"]["code"] == "memory_unavailable", big.get_json()
    assert (small.status_code, small.get_json()["result"]) == (200, 3), small.get_json()
