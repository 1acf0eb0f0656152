"""Admission by memory (jail/admission.py): the ledger shared by real processes, and the memory
the service reads from a cgroup tree as the kernel writes it. No root, no jail."""
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from jail.admission import Budget, MemoryLedger, memory_total
from jail.limits import MIB


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
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
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
