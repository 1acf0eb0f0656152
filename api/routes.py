"""The HTTP endpoints: POST /execute (sync or ?async=1), GET and DELETE /jobs/<id>, GET /health."""
import logging

from flask import Blueprint, Response, jsonify, request, url_for

from api.clients import client_id
from api.errors import INTERNAL_ERROR, SANDBOX_UNAVAILABLE, respond
from api.jobs import JOB_ID, RQ_BACKSTOP_S, JobQueue, QueueError, QueueUnavailable
from api.logs import annotate
from shared.logs import run_fields
from shared.metrics import observe_run, observe_sandbox_error
from api.request_ids import request_id
from api.service import service
from api.requests import parse_execute
from api.responses import job_body, outcome_body, queue_error
from jail import Limits, RunInput, SandboxError, run, warm_pool
from jail.selftest import SelfTest, self_test

log = logging.getLogger(__name__)
bp = Blueprint("sandbox", __name__)


def _checked() -> SelfTest:
    """The startup self-test's verdict, re-run while it has not passed."""
    state = service()
    if state.selftest is None or not state.selftest.passed:
        state.selftest = self_test()
    return state.selftest


def _queue() -> JobQueue:
    jobs = service().jobs
    if jobs is None:
        raise QueueUnavailable("async runs need a queue: set REDIS_URL")
    return jobs


def _run_here(script: str, limits: Limits, inputs: RunInput | None) -> Response:
    """The run's answer, with how long it waited for a run slot as Server-Timing `slot`."""
    if not _checked().passed:
        raise SANDBOX_UNAVAILABLE("the sandbox failed its self-test; no script is run until it passes")
    with service().capacity.slot(client_id()) as waited_s:
        try:
            outcome = run(script, limits, inputs=inputs)
        except SandboxError:
            observe_sandbox_error()
            log.exception("the sandbox failed")
            raise INTERNAL_ERROR("the sandbox failed; the error was logged") from None
    observe_run(outcome)
    annotate(**run_fields(outcome))  # the request's line is the run's: no second line per run
    response = jsonify(outcome_body(outcome))
    response.headers["Server-Timing"] = f"slot;dur={waited_s * 1000:.1f}"
    return response


@bp.errorhandler(QueueError)
def _queue_refused(exc: QueueError) -> Response:
    return respond(queue_error(exc, service().settings.retry_after_s))


@bp.post("/execute")
def execute():
    """Run the script and answer what its main() returned, or enqueue it (?async=1)."""
    script, limits, inputs, queued = parse_execute(request, service().settings)
    if queued:
        job = _queue().submit(script, limits, inputs, request_id(), client_id())
        annotate(job_id=job.id)
        response = jsonify({"id": job.id, "status": "queued"})
        response.status_code = 202
        response.headers["Location"] = url_for("sandbox.job", job_id=job.id)
        return response
    if service().settings.execute_via_queue:
        queue = _queue()
        job = queue.submit(script, limits, inputs, request_id(), client_id())
        annotate(job_id=job.id)
        return jsonify(outcome_body(queue.wait(job, service().settings.queue_wait_s,
                                               limits.timeout_s + RQ_BACKSTOP_S)))
    return _run_here(script, limits, inputs)


@bp.get("/jobs/<job_id>")
def job(job_id: str):
    """A queued run's status; its result or error once it has ended."""
    annotate(job_id=job_id if JOB_ID.fullmatch(job_id) else None)
    return jsonify(job_body(_queue().state(job_id, client_id())))


@bp.delete("/jobs/<job_id>")
def cancel_job(job_id: str):
    """Cancel a queued or running run; answers its state, canceled."""
    annotate(job_id=job_id if JOB_ID.fullmatch(job_id) else None)
    return jsonify(job_body(_queue().cancel(job_id, client_id())))


@bp.get("/health")
def health():
    """200 when scripts can run: the jail passed its escape probes (or workers serve the queue)."""
    body: dict = {}
    state = service()
    if state.settings.execute_via_queue:
        queue = body["queue"] = _queue().health()
        healthy = queue["redis"] == "ok" and queue["workers"] > 0
    else:
        verdict = _checked()
        pool = warm_pool()
        body["enforcement"] = verdict.enforcement.value
        body["selftest"] = verdict.to_dict()
        body["warm_jails"] = {"size": pool.size if pool else 0, "idle": pool.idle if pool else 0}
        healthy = verdict.passed
        if state.jobs is not None:
            body["queue"] = state.jobs.health()
    return jsonify({"status": "ok" if healthy else "unavailable", **body}), 200 if healthy else 503
