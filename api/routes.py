"""The HTTP endpoints: POST /execute (sync or ?async=1), GET and DELETE /jobs/<id>, GET /health."""
import logging

from flask import Blueprint, Response, current_app, jsonify, request, url_for

from api.capacity import Capacity
from api.clients import client_id
from api.errors import ApiError
from api.jobs import JOB_ID, RQ_BACKSTOP_S, JobQueue, unavailable
from api.logs import annotate, run_fields
from api.metrics import observe_run, observe_sandbox_error
from api.request_ids import request_id
from api.requests import parse_execute
from api.responses import outcome_body
from jail import Limits, RunInput, SandboxError, run, warm_pool
from jail.selftest import SelfTest, self_test

log = logging.getLogger(__name__)
bp = Blueprint("sandbox", __name__)


def _state() -> dict:
    return current_app.extensions["pysandbox"]


def _checked() -> SelfTest:
    """The startup self-test's verdict, re-run while it has not passed."""
    state = _state()
    if not state["selftest"].passed:
        state["selftest"] = self_test()
    return state["selftest"]


def _queue() -> JobQueue:
    jobs = _state()["jobs"]
    if jobs is None:
        raise unavailable("async runs need a queue: set REDIS_URL")
    return jobs


def _run_here(script: str, limits: Limits, inputs: RunInput | None) -> Response:
    """The run's answer, with how long it waited for a run slot as Server-Timing `slot`."""
    if not _checked().passed:
        raise ApiError(503, "sandbox_unavailable",
                       "the sandbox failed its self-test; no script is run until it passes",
                       headers={"Retry-After": "30"})
    capacity: Capacity = _state()["capacity"]
    with capacity.slot(client_id(), limits.memory_mb) as waited_s:
        try:
            outcome = run(script, limits, inputs=inputs)
        except SandboxError:
            observe_sandbox_error()
            log.exception("the sandbox failed")
            raise ApiError(500, "internal_error", "the sandbox failed; the error was logged") from None
    observe_run(outcome)
    annotate(**run_fields(outcome))  # the request's line is the run's: no second line per run
    response = jsonify(outcome_body(outcome))
    response.headers["Server-Timing"] = f"slot;dur={waited_s * 1000:.1f}"
    return response


@bp.post("/execute")
def execute():
    """Run the script and answer what its main() returned, or enqueue it (?async=1)."""
    script, limits, inputs, queued = parse_execute(request, current_app.config)
    if queued:
        job = _queue().submit(script, limits, inputs, request_id(), client_id())
        annotate(job_id=job.id)
        response = jsonify({"id": job.id, "status": "queued"})
        response.status_code = 202
        response.headers["Location"] = url_for("sandbox.job", job_id=job.id)
        return response
    if current_app.config["EXECUTE_VIA_QUEUE"]:
        queue = _queue()
        job = queue.submit(script, limits, inputs, request_id(), client_id())
        annotate(job_id=job.id)
        return jsonify(queue.wait(job, current_app.config["QUEUE_WAIT_S"],
                                  limits.timeout_s + RQ_BACKSTOP_S))
    return _run_here(script, limits, inputs)


@bp.get("/jobs/<job_id>")
def job(job_id: str):
    """A queued run's status; its result or error once it has ended."""
    annotate(job_id=job_id if JOB_ID.fullmatch(job_id) else None)
    return jsonify(_queue().state(job_id, client_id()))


@bp.delete("/jobs/<job_id>")
def cancel_job(job_id: str):
    """Cancel a queued or running run; answers its state, canceled."""
    annotate(job_id=job_id if JOB_ID.fullmatch(job_id) else None)
    return jsonify(_queue().cancel(job_id, client_id()))


@bp.get("/health")
def health():
    """200 when scripts can run: the jail passed its escape probes (or workers serve the queue)."""
    body: dict = {}
    if current_app.config["EXECUTE_VIA_QUEUE"]:
        queue = body["queue"] = _queue().health()
        healthy = queue["redis"] == "ok" and queue["workers"] > 0
    else:
        verdict = _checked()
        pool = warm_pool()
        body["enforcement"] = verdict.enforcement.value
        body["selftest"] = verdict.to_dict()
        body["warm_jails"] = {"size": pool.size if pool else 0, "idle": pool.idle if pool else 0}
        memory = _state()["capacity"].memory
        if memory is not None:
            body["memory"] = memory.health(current_app.config["MAX_MEMORY_MB"])
        healthy = verdict.passed
        if _state()["jobs"] is not None:
            body["queue"] = _state()["jobs"].health()
    return jsonify({"status": "ok" if healthy else "unavailable", **body}), 200 if healthy else 503
