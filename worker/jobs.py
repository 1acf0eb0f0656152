"""The job function the API enqueues by name: run one script in the jail."""
from typing import Any

from rq import get_current_job

from jail import Limits, run
from worker.queue import keep_alive


def execute(script: str, limits: dict[str, Any]) -> dict[str, Any]:
    """Run the script with these limits; the Outcome as a dict (SandboxError fails the job)."""
    job = get_current_job()
    assert job is not None, "execute() runs inside an RQ job"
    with keep_alive(job.connection, job.id):
        return run(script, Limits(**limits)).to_dict()
