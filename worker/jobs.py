"""The job function the API enqueues by name: run one script in the jail."""
import logging
from datetime import UTC, datetime
from typing import Any

from rq import get_current_job

from api.logs import run_fields
from api.metrics import QUEUE_WAIT_SECONDS, observe_run, observe_sandbox_error
from jail import Limits, Outcome, RunInput, SandboxError, Status, run
from worker.queue import keep_alive

log = logging.getLogger(__name__)


def execute(script: str, limits: dict[str, Any], inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the script with these limits and inputs (checked by the API); the Outcome as a dict
    (SandboxError fails the job).

    A job canceled before it starts never reaches a jail; one canceled while it runs has its
    jail killed. Both end as Status.CANCELED."""
    job = get_current_job()
    assert job is not None, "execute() runs inside an RQ job"
    ids = {"job_id": job.id, "request_id": job.meta.get("request_id")}
    if job.enqueued_at is not None:
        enqueued = job.enqueued_at if job.enqueued_at.tzinfo else job.enqueued_at.replace(tzinfo=UTC)
        QUEUE_WAIT_SECONDS.observe(max(0.0, (datetime.now(UTC) - enqueued).total_seconds()))
    log.info("job started", extra=ids)
    with keep_alive(job.connection, job.id) as canceled:
        if canceled.is_set():
            outcome = Outcome(Status.CANCELED, message="the job was canceled before it ran")
        else:
            try:
                outcome = run(script, Limits(**limits), cancel=canceled,
                              inputs=None if inputs is None else RunInput(**inputs))
            except SandboxError:
                observe_sandbox_error()
                log.exception("job failed: the sandbox failed", extra=ids)
                raise
            observe_run(outcome)
    log.info("job ended: %s", outcome.status.value, extra={**ids, **run_fields(outcome)})
    return outcome.to_dict()
