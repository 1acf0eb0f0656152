"""Shared fixtures. Tests run the real nsjail, gunicorn, redis-server and Docker: no mocks."""
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from jail import Limits, Outcome, RunInput, Sandbox, run
from jail.cgroups import Cgroups
from jail.warm import START_TIMEOUT_S
from tests.support.servers import gunicorn

pytest_plugins = ["tests.support.images"]
"""The `image` and `plot_image` fixtures (the images `make image` builds)."""
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
def each_jail_kind(request: pytest.FixtureRequest) -> str:
    """The kinds of jail a module's `sandbox` is made with: one-off and warm jails, with this
    host's cgroups and with none (as on Cloud Run or without CAP_SYS_ADMIN: rlimits and the
    watchdog bound them)."""
    return request.param


class WaitingSandbox(Sandbox):
    """A Sandbox with warm jails that waits for one when nothing else runs (a refill after a
    kill), so that its runs are warm; it never queues behind other runs, which would count the
    wait as run time. Runs whose tmp_mb differs from the pool's are one-off, as in the service."""

    def __init__(self, host: Cgroups | None) -> None:
        super().__init__(2, Limits().tmp_mb, host)
        self._lock, self._in_flight = threading.Lock(), 0

    def run(self, script: str, limits: Limits, cancel: threading.Event | None = None, *,
            inputs: RunInput | None = None) -> Outcome:
        assert self.pool is not None
        with self._lock:
            self._in_flight += 1
            alone = self._in_flight == 1
        try:
            outcome = self.pool.run(script, limits, wait_s=START_TIMEOUT_S if alone else 0, cancel=cancel,
                                    inputs=inputs)
        finally:
            with self._lock:
                self._in_flight -= 1
        return outcome if outcome is not None else run(script, limits, cancel, inputs=inputs, host=self.host)


@pytest.fixture(scope="module")
def sandbox(each_jail_kind: str) -> Iterator[Sandbox]:
    """The Sandbox a module's tests run scripts in, once per kind of jail (each_jail_kind)."""
    host = NO_CGROUPS if each_jail_kind.endswith("rlimits") else None
    made = WaitingSandbox(host) if each_jail_kind.startswith("warm") else Sandbox(host=host)
    try:
        yield made
    finally:
        made.close()
