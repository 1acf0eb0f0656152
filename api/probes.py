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
from flask import Blueprint, Response, jsonify

from api.service import service

bp = Blueprint("probes", __name__)


def _answer(reason: str | None) -> tuple[Response, int]:
    body = {"status": "ok" if reason is None else "unavailable", "reason": reason}
    return jsonify(body), 200 if reason is None else 503


@bp.get("/livez")
def livez():
    """200 while this process answers; never checks Redis or workers."""
    return _answer(None)


@bp.get("/readyz")
def readyz():
    """200 when this replica can take work now (not draining, and as its run mode says); 503 with
    the reason."""
    state = service()
    return _answer("draining" if state.draining.is_set() else state.mode.unready())


@bp.get("/startupz")
def startupz():
    """200 once the start is over, as the run mode says; 503 with the reason."""
    return _answer(service().mode.unstarted())
