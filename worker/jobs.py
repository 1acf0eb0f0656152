"""The job function the API enqueues by name: run one script in the jail."""
import logging
from typing import Any

from rq import get_current_job

from jail import Limits, Outcome, RunInput, Status, run
from worker.queue import keep_alive

log = logging.getLogger(__name__)


def execute(script: str, limits: dict[str, Any], inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the script with these limits and inputs (checked by the API); the Outcome as a dict
    (SandboxError fails the job).

    A job canceled before it starts never reaches a jail; one canceled while it runs has its
    jail killed. Both end as Status.CANCELED."""
    job = get_current_job()
    assert job is not None, "execute() runs inside an RQ job"
    log.info("job %s (request %s) started", job.id, job.meta.get("request_id"))
    with keep_alive(job.connection, job.id) as canceled:
        if canceled.is_set():
            return Outcome(Status.CANCELED, message="the job was canceled before it ran").to_dict()
        outcome = run(script, Limits(**limits), cancel=canceled,
                      inputs=None if inputs is None else RunInput(**inputs))
    log.info("job %s (request %s) ended: %s", job.id, job.meta.get("request_id"), outcome.status.value)
    return outcome.to_dict()
