"""Shared fixtures. Tests run the real nsjail, gunicorn, redis-server and Docker: no mocks."""
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from jail import Limits, Outcome, RunInput
from jail.cgroups import Cgroups
from jail.nsjail import run_once
from jail.warm import START_TIMEOUT_S, WarmPool
from tests.servers import gunicorn

NO_CGROUPS = Cgroups(Path("/sys/fs/cgroup"), frozenset(), "off for this test")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With CI=true a skipped test fails the run: CI must run every test."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if os.environ.get("CI") == "true" and skipped:
        print(f"\nCI=true: {len(skipped)} skipped test(s) count as failures")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def limits() -> Limits:
    """Small limits so that hostile scripts end quickly."""
    return Limits(timeout_s=3.0, memory_mb=256)


@pytest.fixture(scope="session")
def service_url() -> Iterator[str]:
    """One real gunicorn for the HTTP tests of a session."""
    with gunicorn({"PYSANDBOX_MAX_TIMEOUT_S": "5"}) as url:
        yield url


@pytest.fixture(scope="module", params=["one-off", "warm", "one-off-rlimits", "warm-rlimits"])
def each_jail_kind(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs the module's tests with one-off and warm jails, with this host's cgroups and with
    none (as on Cloud Run or without CAP_SYS_ADMIN: rlimits and the watchdog bound them).

    The module's own `run` is swapped for run_once, or for one that uses a warm jail;
    runs whose tmp_mb differs from the pool's take the one-off path, as in the service.
    """
    if request.param.startswith("one-off"):  # pinned: an app made by another test may have left a pool
        host = NO_CGROUPS if request.param == "one-off-rlimits" else None
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(request.module, "run", lambda script, limits, **kw: run_once(
                script, limits, host, **kw))
            yield request.param
        return
    host = NO_CGROUPS if request.param == "warm-rlimits" else None
    pool, lock, in_flight = WarmPool(2, Limits().tmp_mb, host), threading.Lock(), [0]

    def run_warm(script: str, limits: Limits, inputs: RunInput | None = None) -> Outcome:
        """Wait for a warm jail when nothing else runs (a refill after a kill); never queue
        behind other runs, which would count the wait as run time."""
        with lock:
            in_flight[0] += 1
            alone = in_flight[0] == 1
        try:
            outcome = pool.run(script, limits, wait_s=START_TIMEOUT_S if alone else 0, inputs=inputs)
        finally:
            with lock:
                in_flight[0] -= 1
        return outcome if outcome is not None else run_once(script, limits, inputs=inputs)

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(request.module, "run", run_warm)
            yield request.param
    finally:
        pool.close()
