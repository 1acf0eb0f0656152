"""The HTTP edge's rendering of domain values: a run's Outcome (200 with the result, or 422 with
the script's error), a job's state, and the queue's refusals."""
from typing import Any

from flask import Response, jsonify, url_for

from api.errors import CANCELED as CANCELED_CODE
from api.errors import (
    CATALOG,
    INTERNAL_ERROR,
    JOB_FINISHED,
    JOB_NOT_FOUND,
    QUEUE_UNAVAILABLE,
    STORAGE_BUDGET_EXCEEDED,
    STORAGE_FULL,
    WORKER_LOST,
    ApiError,
    busy,
)
from api.job_queue import (
    Ended,
    Fault,
    JobFailed,
    JobFinished,
    JobNotFound,
    JobOverran,
    JobState,
    NoWorkerFree,
    OverBudget,
    QueueError,
    QueueFull,
    QueueUnavailable,
)
from jail import Outcome
from shared.answers import SANDBOX_FAILED, WORKER_LOST_MESSAGE, output_fields, session_ended_job

FAULTS = {
    Fault.CANCELED: (CANCELED_CODE, "the job was canceled by its client"),
    Fault.WORKER_LOST: (WORKER_LOST, WORKER_LOST_MESSAGE),
    Fault.SANDBOX_FAILED: (INTERNAL_ERROR, SANDBOX_FAILED),
}


def outcome_error(outcome: Outcome) -> ApiError:
    """The error of a run whose main() did not return a JSON value (422 but for `canceled`, which
    only a job's state carries)."""
    detail = {"traceback": outcome.traceback} if outcome.traceback else {}
    return CATALOG[outcome.status.value](outcome.message, detail=detail, extra=output_fields(outcome))


def outcome_body(outcome: Outcome) -> dict[str, Any]:
    """The 200 body of a run whose main() returned; raises its error otherwise."""
    if not outcome.ok:
        raise outcome_error(outcome)
    return {"result": outcome.result, **output_fields(outcome)}


def ended_error(ended: Ended) -> ApiError:
    """The error a job ended in."""
    if isinstance(ended, Outcome):
        return outcome_error(ended)
    code, message = FAULTS[ended]
    return code(message)


def accepted(job_id: str) -> Response:
    """202 for a queued run or session call: its id, `queued`, and where to poll it."""
    response = jsonify({"id": job_id, "status": "queued"})
    response.status_code = 202
    response.headers["Location"] = url_for("sandbox.job", job_id=job_id)
    return response


def job_body(state: JobState) -> dict[str, Any]:
    """{"id", "status", "request_id", ...}: with its result, or its error, once it has ended (a
    session's call, with its session's state then, as the call's own answer has it)."""
    head = {"id": state.id, "status": state.status, "request_id": state.request_id,
            "worker": state.worker}
    callback = {"callback": state.callback} if state.callback is not None else {}
    session = {"session": state.session} if state.session is not None else {}
    if state.ended is None:
        return {**head, **callback}
    if isinstance(state.ended, Outcome) and state.ended.ok:
        return {**head, **outcome_body(state.ended), **session, **callback}
    if state.ended is Fault.SESSION_ENDED:
        body = session_ended_job(state.id, state.request_id, state.session_ended or "lost", state.session)
        return {**head, **body, **callback}
    return {**head, **ended_error(state.ended).to_dict(), **session, **callback}


def queue_error(exc: QueueError, retry_after_s: int) -> ApiError:
    """The answer to a refusal or failure of the queue; retry_after_s: PYSANDBOX_RETRY_AFTER_S.

    Over a storage budget: room comes back as running jobs end (their worst case becomes what
    they stored) and as results expire. 503, as `busy` is for the client's share of the queue:
    429 means a rate limit, with its X-RateLimit-* headers."""
    match exc:
        case QueueFull() | NoWorkerFree():
            return busy(str(exc), retry_after_s)
        case OverBudget(refusal=refusal, need=need, budget=budget):
            reserve = (f"this job reserves {need} bytes (its input and the largest result its limits "
                       "allow, until it ends)")
            if refusal.client_full:
                return STORAGE_BUDGET_EXCEEDED(
                    f"this client's jobs hold {refusal.client_held} bytes of its {budget.client_bytes}-byte "
                    f"storage budget in the queue and {reserve}; retry once some of its jobs have ended "
                    "or their results have expired", retry_after_s=retry_after_s)
            return STORAGE_FULL(f"the queue's storage holds {refusal.total_held} bytes of its "
                                f"{budget.total_bytes} and {reserve}; retry shortly",
                                retry_after_s=retry_after_s)
        case QueueUnavailable():
            return QUEUE_UNAVAILABLE(str(exc))
        case JobNotFound():
            return JOB_NOT_FOUND("no such job, or its result has expired")
        case JobFinished():
            return JOB_FINISHED("the job has already ended; only queued or running jobs can be canceled")
        case JobFailed(ended=ended):
            return ended_error(ended)
        case JobOverran():
            return INTERNAL_ERROR("the run did not end in time; the error was logged")
    raise TypeError(f"no answer for {exc!r}")
