"""The HTTP endpoints: POST /execute and GET /health."""
import logging

from flask import Blueprint, current_app, jsonify, request

from api.capacity import Capacity
from api.errors import ApiError
from api.requests import parse_execute
from api.responses import outcome_body
from jail import SandboxError, run
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


@bp.post("/execute")
def execute():
    """Run the script in a fresh jail and answer what its main() returned."""
    script, limits = parse_execute(request, current_app.config)
    if not _checked().passed:
        raise ApiError(503, "sandbox_unavailable",
                       "the sandbox failed its self-test; no script is run until it passes",
                       headers={"Retry-After": "30"})
    capacity: Capacity = _state()["capacity"]
    with capacity.slot():
        try:
            outcome = run(script, limits)
        except SandboxError:
            log.exception("the sandbox failed")
            raise ApiError(500, "internal_error", "the sandbox failed; the error was logged") from None
    return jsonify(outcome_body(outcome))


@bp.get("/health")
def health():
    """200 once the jail has passed its escape probes; 503 otherwise."""
    verdict = _checked()
    body = {"status": "ok" if verdict.passed else "unavailable", "selftest": verdict.to_dict()}
    return jsonify(body), 200 if verdict.passed else 503
