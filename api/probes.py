"""Probes that mean different things, as Kubernetes defines them (GET /livez, /readyz, /startupz).

  - liveness (/livez): this process answers HTTP. Nothing else: a Redis outage or no worker
    must never make an orchestrator restart the API (a restart storm cures neither).
  - readiness (/readyz): this replica can take work now: its jail passed the self-test (where
    it runs scripts), the queue answers where its mode needs one (an API that only enqueues),
    and it is not draining (its gunicorn worker got SIGTERM: api/gunicorn.conf.py).
    Workers being away does not make it 503: an API that enqueues must stay ready to take jobs
    while an autoscaler brings workers up from zero (deploy/k8s's KEDA ScaledObject).
  - startup (/startupz): the slow start is over: the self-test passed and the warm jails were
    filled once (an API that only enqueues has nothing to warm).
/health stays what it was, for existing users. All four are public and never rate limited
(api/clients.py's PUBLIC_PATHS).
"""
from typing import Any

from flask import Blueprint, Response, jsonify

from api.modes import EnqueueOnly, RunMode
from api.service import service

bp = Blueprint("probes", __name__)


def _answer(failed: str | None, **details: Any) -> tuple[Response, int]:
    body = {"status": "ok" if failed is None else "unavailable", "reason": failed, **details}
    return jsonify(body), 200 if failed is None else 503


def not_ready(mode: RunMode, draining: bool) -> str | None:
    """Why this replica cannot take work now, or None."""
    if draining:
        return "draining"
    if isinstance(mode, EnqueueOnly):
        return None if mode.jobs.reachable() else "redis_unreachable"
    return None if mode.checked().passed else "selftest_failed"


def not_started(mode: RunMode) -> str | None:
    """Why the start is not over yet, or None."""
    if isinstance(mode, EnqueueOnly):
        return None
    if not mode.checked().passed:
        return "selftest_failed"
    return None if mode.warmed() else "warming"


@bp.get("/livez")
def livez():
    """200 while this process answers; never checks Redis or workers."""
    return _answer(None)


@bp.get("/readyz")
def readyz():
    """200 when this replica can take work now; 503 with the reason."""
    state = service()
    return _answer(not_ready(state.mode, state.draining.is_set()))


@bp.get("/startupz")
def startupz():
    """200 once the self-test passed and the warm jails were filled; 503 with the reason."""
    return _answer(not_started(service().mode))
