"""What an answer says about a run, for the two processes that render one: the API (its answers,
api/responses.py) and the worker (the body of a job's callback, shared/callbacks.py), so that a
callback carries the JSON GET /jobs/<id> answers."""
from dataclasses import asdict
from typing import Any

from jail import Outcome, Status

SANDBOX_FAILED = "the sandbox failed to run this job; the error was logged"
"""The message of a job whose sandbox failed (code internal_error)."""
WORKER_LOST_MESSAGE = ("the worker running this job died, or lost the queue, before it finished; it was not "
                       "re-run (submit it again)")
"""The message of a job whose worker was lost (code worker_lost)."""


def output_fields(outcome: Outcome) -> dict[str, Any]:
    """What the script printed, how long it ran and what it used: part of every answer about a run."""
    return {"stdout": outcome.stdout, "stderr": outcome.stderr,
            "output_truncated": outcome.output_truncated, "duration_ms": outcome.duration_ms,
            "cpu_ms": outcome.cpu_ms, "peak_memory_mb": outcome.peak_memory_mb,
            "files": [asdict(f) for f in outcome.files], "files_truncated": outcome.files_truncated,
            "enforcement": outcome.enforcement or None}


def ended_job(job_id: str, request_id: str | None, outcome: Outcome | None,
              worker: str | None = None) -> dict[str, Any]:
    """GET /jobs/<id>'s JSON of a job that ended in `worker`: with its outcome, or (None) after
    its sandbox failed. api/responses.py's job_body renders the same for the API."""
    head = {"id": job_id, "request_id": request_id, "worker": worker}
    if outcome is None:
        return {**head, "status": "failed", "error": {"code": "internal_error", "message": SANDBOX_FAILED}}
    if outcome.ok:
        return {**head, "status": "finished", "result": outcome.result, **output_fields(outcome)}
    error = {"code": outcome.status.value, "message": outcome.message,
             **({"traceback": outcome.traceback} if outcome.traceback else {})}
    status = "canceled" if outcome.status is Status.CANCELED else "failed"
    return {**head, "status": status, "error": error, **output_fields(outcome)}


def lost_job(job_id: str, request_id: str | None, worker: str | None) -> dict[str, Any]:
    """GET /jobs/<id>'s JSON of a job whose worker `worker` was lost while it ran (shared/queue.py's
    is_lost and failed_lost); api/responses.py's job_body renders the same."""
    return {"id": job_id, "request_id": request_id, "worker": worker, "status": "failed",
            "error": {"code": "worker_lost", "message": WORKER_LOST_MESSAGE}}


def session_ended_job(job_id: str, request_id: str | None, reason: str,
                      state: dict[str, Any] | None) -> dict[str, Any]:
    """GET /jobs/<id>'s JSON of a session's queued call whose session ended before its turn
    (shared/session_calls.py); api/responses.py's job_body renders the same."""
    error = {"code": "session_ended", "message": f"the session ended: {reason}", "reason": reason}
    return {"id": job_id, "request_id": request_id, "worker": None, "status": "failed", "error": error,
            **({"session": state} if state is not None else {})}
