"""Warm jails: each run still starts clean, a broken warm jail never costs a run."""
import concurrent.futures
import os
import signal
import time
from pathlib import Path

import pytest

from jail import Limits, Status
from jail.cgroups import Cgroups
from jail.nsjail import run_once
from jail.warm import START_TIMEOUT_S, WarmPool

LIMITS = Limits(timeout_s=3.0, memory_mb=128)
WAS_PRELOADED = "import sys\nPRELOADED = 'pandas' in sys.modules\n"
"""Prepended to a script: True only in a warm jail, whose zygote imported pandas."""


@pytest.fixture
def pool():
    warm = WarmPool(1, LIMITS.tmp_mb)
    yield warm
    warm.close()


def warm_run(pool: WarmPool, script: str, limits: Limits = LIMITS):
    outcome = pool.run(WAS_PRELOADED + script, limits, wait_s=START_TIMEOUT_S)
    assert outcome is not None, "no warm jail came up"
    return outcome


def test_runs_really_are_warm_and_one_off_runs_are_not(pool):
    assert warm_run(pool, "def main(): return PRELOADED").result is True
    assert run_once(WAS_PRELOADED + "def main(): return PRELOADED", LIMITS).result is False


@pytest.mark.parametrize("leave, look", [
    ("open('/tmp/left', 'w').write('x')", "os.path.exists('/tmp/left')"),
    ("open('/dev/shm/left', 'w').write('x')", "os.path.exists('/dev/shm/left')"),
    ("open('left', 'w').write('x')", "os.path.exists('left')"),
    ("os.environ['LEFT'] = '1'", "'LEFT' in os.environ"),
    ("sys.modules['json'].LEFT = 1", "hasattr(sys.modules['json'], 'LEFT')"),
    ("import pandas; pandas.set_option('display.max_rows', 3)",
     "__import__('pandas').get_option('display.max_rows') == 3"),
    ("import numpy; numpy.LEFT = 1", "hasattr(__import__('numpy'), 'LEFT')"),
    ("sys.path.append('/tmp/evil')", "'/tmp/evil' in sys.path"),
    ("import builtins; builtins.LEFT = 1", "hasattr(__import__('builtins'), 'LEFT')"),
], ids=["tmp-file", "shm-file", "cwd-file", "env-var", "module-attr", "pandas-option", "numpy-attr",
        "sys-path", "builtins"])
def test_nothing_one_run_leaves_reaches_the_next(pool, leave, look):
    first = warm_run(pool, f"import os, sys\ndef main():\n    {leave}\n    return PRELOADED")
    assert first.status is Status.OK and first.result is True, first
    second = warm_run(pool, f"import os, sys\ndef main():\n    return [PRELOADED, {look}]")
    assert second.status is Status.OK and second.result == [True, False], second


def test_a_daemon_from_one_run_is_gone_in_the_next(pool):
    daemon = ("import os, time\ndef main():\n    if os.fork() == 0:\n        os.setsid()\n"
              "        if os.fork() == 0:\n            open('/dev/shm/alive', 'w').write('x')\n"
              "            time.sleep(30)\n        os._exit(0)\n    time.sleep(0.2)\n    return 1")
    assert warm_run(pool, daemon).status is Status.OK
    probe = ("import os\ndef main():\n    pids = [p for p in range(2, 200) if _alive(p)]\n"
             "    return [PRELOADED, pids]\n"
             "def _alive(pid):\n    try:\n        os.kill(pid, 0)\n        return True\n"
             "    except ProcessLookupError:\n        return False\n    except PermissionError:\n"
             "        return True\n")
    assert warm_run(pool, probe).result == [True, []]


def test_sysv_ipc_from_one_run_is_gone_in_the_next(pool):
    make = ("import ctypes\ndef main():\n    libc = ctypes.CDLL(None, use_errno=True)\n"
            "    return [PRELOADED, libc.shmget(4242, 4096, 0o1666)]")
    look = ("import ctypes\ndef main():\n    libc = ctypes.CDLL(None, use_errno=True)\n"
            "    return [PRELOADED, libc.shmget(4242, 0, 0o666)]")
    created = warm_run(pool, make).result
    assert created[0] is True and created[1] >= 0
    assert warm_run(pool, look).result == [True, -1]


def test_random_state_differs_between_runs(pool):
    script = ("import random, numpy\ndef main():\n"
              "    return [PRELOADED, random.random(), float(numpy.random.rand())]")
    first, second = warm_run(pool, script).result, warm_run(pool, script).result
    assert first[0] is second[0] is True
    assert first[1] != second[1] and first[2] != second[2]


def test_a_killed_run_discards_its_jail_and_the_pool_recovers(pool):
    assert warm_run(pool, "def main():\n    while True: pass", Limits(timeout_s=1)).status \
        is Status.TIMEOUT
    assert warm_run(pool, "def main(): return PRELOADED").result is True


def test_memory_limit_holds_per_warm_run(pool):
    bomb = "def main():\n    return len(bytearray(400 * 2**20))"
    assert warm_run(pool, bomb, Limits(memory_mb=128)).status is Status.MEMORY_LIMIT
    assert warm_run(pool, bomb, Limits(memory_mb=600)).result == 400 * 2**20


def test_a_zygote_killed_from_outside_costs_no_run(pool):
    assert warm_run(pool, "def main(): return 1").result == 1
    jail = pool._idle.get()  # the pool's one jail: kill it as the OOM killer or an operator might
    os.killpg(jail.proc.pid, signal.SIGKILL)
    jail.proc.wait()
    pool._idle.put(jail)
    outcome = pool.run("def main(): return 'still served'", LIMITS, wait_s=START_TIMEOUT_S)
    assert outcome is not None and outcome.result == "still served"
    assert warm_run(pool, "def main(): return PRELOADED").result is True


def test_when_every_warm_jail_is_busy_runs_go_one_off(pool):
    warm_run(pool, "def main(): return 1")
    slow = WAS_PRELOADED + "import time\ndef main():\n    time.sleep(1)\n    return PRELOADED"
    with concurrent.futures.ThreadPoolExecutor(2) as threads:
        busy = threads.submit(pool.run, slow, LIMITS)
        while pool.idle:
            time.sleep(0.001)
        assert pool.run(slow, LIMITS) is None  # the caller then runs it one-off
        assert busy.result().result is True


def test_without_cgroups_warm_runs_are_bounded_by_rlimits():
    """As on cgroup v2 hosts or Cloud Run: the same warm jails, memory capped by RLIMIT_AS."""
    pool = WarmPool(1, LIMITS.tmp_mb, Cgroups(Path("/sys/fs/cgroup"), frozenset(), "off for this test"))
    try:
        assert warm_run(pool, "import pandas\ndef main(): return PRELOADED").result is True
        bomb = "def main():\n    return len(bytearray(400 * 2**20))"
        assert warm_run(pool, bomb, Limits(memory_mb=128)).status is Status.MEMORY_LIMIT
        assert warm_run(pool, bomb, Limits(memory_mb=600)).result == 400 * 2**20
        fork_bomb = "import os\ndef main():\n    while True:\n        os.fork()"
        assert warm_run(pool, fork_bomb, Limits(timeout_s=2, max_pids=16)).status in (
            Status.MAIN_ERROR, Status.TIMEOUT)
        assert warm_run(pool, "def main(): return PRELOADED").result is True
    finally:
        pool.close()


@pytest.mark.parametrize("after_a_run", [False, True])
def test_a_zygote_the_oom_killer_took_costs_no_run_without_cgroups(after_a_run):
    """The OOM killer picks jailed processes (oom_score_adj 1000), the zygote among them: where
    no memory cgroup is had (Cloud Run), the run that next takes that jail goes one-off instead
    of failing the request (it did: IndexError, HTTP 500, under memory pressure)."""
    pool = WarmPool(1, LIMITS.tmp_mb, Cgroups(Path("/sys/fs/cgroup"), frozenset(), "off for this test"))
    try:
        if after_a_run:
            assert warm_run(pool, "def main(): return PRELOADED").result is True
        jail = pool._idle.get(timeout=START_TIMEOUT_S)
        zygote = int(Path(f"/proc/{jail.proc.pid}/task/{jail.proc.pid}/children").read_text().split()[0])
        os.kill(zygote, signal.SIGKILL)
        jail.proc.wait(timeout=10)  # nsjail ends with its only child
        pool._idle.put(jail)
        outcome = pool.run("def main(): return 'still served'", LIMITS)
        assert outcome is not None and outcome.result == "still served" and outcome.jail == "one-off"
        assert warm_run(pool, "def main(): return PRELOADED").result is True
    finally:
        pool.close()
