"""The API's run modes, chosen once by create_app: where a sync POST /execute runs, and what
/health and the probes (api/probes.py) check.

  - RunHere: scripts run in this process's Sandbox, within its run slots (Capacity); the jail's
    self-test decides health. With REDIS_URL, ?async=1 jobs go to the queue's workers.
  - EnqueueOnly (PYSANDBOX_EXECUTE_VIA_QUEUE): every run is a job for the workers, a sync one
    waited for; this process never starts a jail. Health is Redis answering and a worker serving.
The one-container image's third shape (docker/supervise.py: Redis and workers beside gunicorn)
is RunHere with a queue.
"""
import logging
import threading
from typing import Any

from api.capacity import Capacity
from api.errors import INTERNAL_ERROR, SANDBOX_UNAVAILABLE
from api.job_queue import RQ_BACKSTOP_S, JobQueue
from api.logs import annotate
from jail import Limits, Outcome, RunInput, Sandbox, SandboxError
from jail.selftest import SelfTest, self_test
from shared.logs import run_fields
from shared.metrics import observe_run, observe_sandbox_error

log = logging.getLogger(__name__)


class RunHere:
    """Sync runs in this process's sandbox."""

    def __init__(self, sandbox: Sandbox, capacity: Capacity, jobs: JobQueue | None,
                 warmed: threading.Event) -> None:
        self.sandbox, self.capacity, self.jobs, self.warmed = sandbox, capacity, jobs, warmed
        self.selftest: SelfTest | None = self_test(sandbox)

    def checked(self) -> SelfTest:
        """The startup self-test's verdict, re-run while it has not passed."""
        if self.selftest is None or not self.selftest.passed:
            self.selftest = self_test(self.sandbox)
        return self.selftest

    def unready(self) -> str | None:
        """Why this replica cannot take work now (GET /readyz), or None: the self-test. A Redis
        outage is no reason: sync runs need no Redis."""
        return None if self.checked().passed else "selftest_failed"

    def unstarted(self) -> str | None:
        """Why the start is not over (GET /startupz), or None: the self-test, then `warmed`, set
        by the sandbox's change hook once every warm jail was ready at the same time (runs using
        them later do not undo it)."""
        if not self.checked().passed:
            return "selftest_failed"
        return None if self.warmed.is_set() else "warming"

    def execute(self, script: str, limits: Limits, inputs: RunInput | None, client: str,
                request_id: str) -> tuple[Outcome, dict[str, str]]:
        """The run's outcome, and the answer's headers: how long it waited for a run slot, as
        Server-Timing `slot`. The request's log line is the run's (no second line per run)."""
        if not self.checked().passed:
            raise SANDBOX_UNAVAILABLE("the sandbox failed its self-test; no script is run until it passes")
        with self.capacity.slot(client, limits.memory_mb) as waited_s:
            try:
                outcome = self.sandbox.run(script, limits, inputs=inputs)
            except SandboxError:
                observe_sandbox_error()
                log.exception("the sandbox failed")
                raise INTERNAL_ERROR("the sandbox failed; the error was logged") from None
        observe_run(outcome)
        annotate(**run_fields(outcome))
        return outcome, {"Server-Timing": f"slot;dur={waited_s * 1000:.1f}"}

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy when the jail passed its escape probes; the verdict, the warm jails, the queue."""
        verdict = self.checked()
        body: dict[str, Any] = {"enforcement": verdict.enforcement.value, "selftest": verdict.to_dict(),
                                "warm_jails": self.sandbox.warm_jails}
        if self.capacity.memory is not None:
            body["memory"] = self.capacity.memory.health()
        if self.jobs is not None:
            body["queue"] = self.jobs.health()
        return verdict.passed, body


class EnqueueOnly:
    """Sync runs enqueued for the workers and waited for (queue_wait_s for a worker to take one)."""

    selftest: SelfTest | None = None
    """No jail runs here."""

    def __init__(self, jobs: JobQueue, queue_wait_s: float) -> None:
        self.jobs, self.queue_wait_s = jobs, queue_wait_s

    def execute(self, script: str, limits: Limits, inputs: RunInput | None, client: str,
                request_id: str) -> tuple[Outcome, dict[str, str]]:
        """The run's outcome (a QueueError if it failed or was refused), and no extra header."""
        job = self.jobs.submit(script, limits, inputs, request_id, client)
        annotate(job_id=job.id)
        return self.jobs.wait(job, self.queue_wait_s, limits.timeout_s + RQ_BACKSTOP_S), {}

    def unready(self) -> str | None:
        """Why this replica cannot take work now (GET /readyz), or None: Redis. No worker is no
        reason: jobs wait for workers an autoscaler starts."""
        return None if self.jobs.reachable() else "redis_unreachable"

    def unstarted(self) -> str | None:
        """None: nothing here is slow to start."""
        return None

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy when Redis answers and a worker serves the queue."""
        queue = self.jobs.health()
        return queue["redis"] == "ok" and queue["workers"] > 0, {"queue": queue}


RunMode = RunHere | EnqueueOnly
