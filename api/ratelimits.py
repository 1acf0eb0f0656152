"""Rate limits per client with Flask-Limiter: one budget per client across all protected endpoints.

The counters live in the shared Redis (REDIS_URL), so gunicorn processes and replicas share
one budget; without Redis they are in memory, and when Redis stops answering Flask-Limiter
falls back to memory rather than refusing requests. A key's own limits (the third field of
its entry) replace PYSANDBOX_RATE_LIMIT for that key. Past a limit: 429 rate_limited with
Retry-After and X-RateLimit-Limit/-Remaining/-Reset (Flask-Limiter's headers; Reset is a
Unix time).
"""
from flask import Flask, Response, request
from flask_limiter import HeaderNames, Limiter

from api.clients import Key, client_id, client_key, is_public
from api.service import service

RETRY_AFTER_HEADER = "X-PySandbox-Rate-Retry-After"
"""Internal: never sent (see _retry_after_on_429_only)."""
STRATEGY = "sliding-window-counter"
"""Two counters per client and limit: no burst of twice the limit across a window's edge, as a
fixed window allows, and no per-request log, as a moving window keeps."""


def storage_uri(redis_url: str) -> str:
    """The limits library's name for REDIS_URL (its unix sockets are redis+unix://)."""
    if not redis_url:
        return "memory://"
    return "redis+" + redis_url if redis_url.startswith("unix://") else redis_url


def _limit() -> str:
    key = client_key()
    return (key.rate_limit if key and key.rate_limit else None) or service().settings.rate_limit


def _exempt() -> bool:
    return is_public(request.path) or not _limit()


def _retry_after_on_429_only(response: Response) -> Response:
    """Flask-Limiter writes Retry-After on every limited response, and raises a 503 busy's own
    (1 s) to the end of the rate-limit window: it writes it under RETRY_AFTER_HEADER instead,
    which becomes Retry-After on a 429 only, at least 1 (whole seconds round down to 0 in a
    window's last second)."""
    seconds = response.headers.pop(RETRY_AFTER_HEADER, None)
    if response.status_code == 429 and seconds is not None:
        response.headers["Retry-After"] = str(max(1, int(seconds)))
    return response


def enabled(rate_limit: str, keys: list[Key]) -> bool:
    """Whether any client has a rate limit: PYSANDBOX_RATE_LIMIT, or a key's own."""
    return bool(rate_limit) or any(key.rate_limit for key in keys)


def register(app: Flask, redis_url: str, rate_limit: str, keys: list[Key]) -> None:
    """Count every protected request against its client's limits (after authentication): `rate_limit`
    (PYSANDBOX_RATE_LIMIT), or a key's own. With no limit configured there is no limiter at all:
    nothing is added to a request's path."""
    if not enabled(rate_limit, keys):
        return
    app.after_request(_retry_after_on_429_only)  # runs after Flask-Limiter's headers
    Limiter(
        client_id, app=app, application_limits=[_limit], application_limits_exempt_when=_exempt,
        storage_uri=storage_uri(redis_url), strategy=STRATEGY, headers_enabled=True,
        in_memory_fallback_enabled=True, swallow_errors=True, key_prefix="pysandbox-rate",
        retry_after="delta-seconds", header_name_mapping={HeaderNames.RETRY_AFTER: RETRY_AFTER_HEADER})
