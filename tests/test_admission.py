"""Admission by memory (jail/admission.py): the ledger shared by real processes, and the real
service (gunicorn, RQ workers) admitting runs only while their memory limits fit.

The services here get their budget from PYSANDBOX_MEMORY_MB (what an operator sets where the
cgroup's limit is not the service's to use) and a ledger of their own, so that the budget is
exact and no other test's service shares it.
"""
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from api import create_app
from jail import host_cgroups
from jail.admission import BASE_MB, Budget, MemoryLedger, memory_total, standing_bytes
from jail.limits import MIB
from jail.watchdog import SLACK_MB
from tests.servers import gunicorn, redis_server, workers

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


# --- the ledger, between real processes -------------------------------------------------------

def test_reservations_fit_the_budget_and_come_back(tmp_path):
    ledger = MemoryLedger(tmp_path / "ledger", Budget(1000 * MIB, "test", base_bytes=0))
    ledger.stand(400 * MIB)
    first = ledger.try_reserve(300 * MIB)
    assert first is not None
    assert ledger.try_reserve(301 * MIB) is None, "400 + 300 + 301 > 1000"
    assert ledger.never_fits(601 * MIB) and not ledger.never_fits(600 * MIB)
    ledger.release(first)
    assert ledger.held().runs_bytes == 0
    assert ledger.try_reserve(600 * MIB) is not None


def test_a_dead_process_gives_its_memory_back(tmp_path):
    """Another process reserves most of the budget and is killed without releasing it: its
    standing and its run are dropped once it is gone."""
    path = tmp_path / "ledger"
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nfrom pathlib import Path\n"
         "from jail.admission import Budget, MemoryLedger\n"
         f"ledger = MemoryLedger(Path({str(path)!r}), Budget(1000 * 2**20, 't', base_bytes=0))\n"
         "ledger.stand(100 * 2**20)\nassert ledger.try_reserve(800 * 2**20)\n"
         "print('held', flush=True)\ntime.sleep(60)"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        ledger = MemoryLedger(path, Budget(1000 * MIB, "test", base_bytes=0))
        assert ledger.try_reserve(200 * MIB) is None
        assert ledger.held().runs == 1
    finally:
        child.kill()
        child.wait()
    assert ledger.held().runs == 0 and ledger.held().standing_bytes == 0
    assert ledger.try_reserve(900 * MIB) is not None


def test_a_waiting_reservation_gets_memory_freed_elsewhere(tmp_path):
    ledger = MemoryLedger(tmp_path / "ledger", Budget(100 * MIB, "test", base_bytes=0))
    held = ledger.try_reserve(80 * MIB)
    assert held is not None
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(ledger.reserve, 50 * MIB, 10.0)
        time.sleep(0.3)
        assert not waiting.done()
        ledger.release(held)
        assert waiting.result(timeout=5) is not None


def test_the_total_is_the_tightest_cgroup_limit(tmp_path):
    """cgroup v2 (a limit on a parent, none on the leaf) and v1 (a container's own cgroup at the
    mount's root, the path /proc/self/cgroup names absent), read as the kernel writes them."""
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       8000000 kB\nMemFree: 1 kB\n")
    v2 = tmp_path / "v2"
    (v2 / "service").mkdir(parents=True)
    (v2 / "cgroup.controllers").write_text("memory pids cpu\n")
    (v2 / "memory.max").write_text(f"{1024 * MIB}\n")
    (v2 / "service" / "memory.max").write_text("max\n")
    procs = tmp_path / "cgroup"
    procs.write_text("0::/service\n")
    assert memory_total(v2, meminfo, procs) == (1024 * MIB, f"memory.max of {v2}")
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text(f"{512 * MIB}\n")
    procs.write_text("12:memory:/docker/0123abcd\n11:pids:/docker/0123abcd\n0::/\n")
    assert memory_total(v1, meminfo, procs) == (512 * MIB, f"memory.limit_in_bytes of {v1 / 'memory'}")
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert memory_total(v1, meminfo, procs) == (8000000 * 1024, "MemTotal")


# --- the service ----------------------------------------------------------------------------

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
