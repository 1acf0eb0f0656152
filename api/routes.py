"""The HTTP endpoints: POST /execute (sync or ?async=1), GET and DELETE /jobs/<id>, GET /health, /mcp."""
from flask import Blueprint, Response, jsonify, request

from api.clients import client_id
from api.errors import respond
from api.job_queue import JOB_ID, JobQueue, QueueError
from api.logs import annotate
from api.mcp_endpoint import CALLER, Caller
from api.request_ids import request_id
from api.responses import accepted, job_body, outcome_body, queue_error
from api.run_request import parse_run_request
from api.service import service

bp = Blueprint("sandbox", __name__)


def _queue() -> JobQueue:
    return service().job_queue()


@bp.app_errorhandler(QueueError)
def _queue_refused(exc: QueueError) -> Response:
    return respond(queue_error(exc, service().settings.retry_after_s))


@bp.post("/execute")
def execute():
    """Run the script and answer what its main() returned, or enqueue it (?async=1)."""
    asked = parse_run_request(request, service().settings)
    if asked.queued:
        job = _queue().submit(asked.script, asked.limits, asked.inputs, request_id(), client_id(),
                              asked.callback_url)
        annotate(job_id=job.id)
        return accepted(job.id)
    outcome, headers = service().mode.execute(asked.script, asked.limits, asked.inputs, client_id(),
                                              request_id())
    response = jsonify(outcome_body(outcome))
    response.headers.update(headers)
    return response


@bp.get("/jobs/<job_id>")
def job(job_id: str):
    """A queued run's status; its result or error once it has ended."""
    annotate(job_id=job_id if JOB_ID.fullmatch(job_id) else None)
    return jsonify(job_body(_queue().state(job_id, client_id())))


@bp.delete("/jobs/<job_id>")
def cancel_job(job_id: str):
    """Cancel a queued or running run; answers its state, canceled."""
    annotate(job_id=job_id if JOB_ID.fullmatch(job_id) else None)
    jobs = _queue()
    state = jobs.cancel(job_id, client_id())
    answer = job_body(state)
    jobs.ended(state, {name: value for name, value in answer.items() if name != "callback"})
    return jsonify(answer)


@bp.post("/mcp")
def mcp():
    """The MCP endpoint (api/mcp_endpoint.py): past the same key and rate limits as /execute, the
    request goes to the SDK's app, which Flask calls as a WSGI app with this request's environ."""
    endpoint = service().mcp
    assert endpoint is not None
    request.environ[CALLER] = Caller(client_id(), request_id())
    return endpoint.wsgi()


@bp.get("/health")
def health():
    """200 when scripts can run, as the run mode says: the jail passed its escape probes (or
    workers serve the queue)."""
    healthy, body = service().mode.health()
    sessions = service().sessions
    if sessions is not None:
        body["sessions"] = sessions.counts()
    return jsonify({"status": "ok" if healthy else "unavailable", **body}), 200 if healthy else 503
