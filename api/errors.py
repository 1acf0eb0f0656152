"""One error type and the handlers that turn every failure into the same JSON shape."""
import logging
from typing import Any

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from api.logs import annotate
from shared.metrics import ERRORS

log = logging.getLogger(__name__)

HTTP_CODES = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


class ApiError(Exception):
    """A failure answered as {"error": {"code", "message", ...}, ...extra} with a status."""

    def __init__(self, status: int, code: str, message: str, *,
                 detail: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.detail, self.extra, self.headers = detail or {}, extra or {}, headers or {}

    def to_dict(self) -> dict[str, Any]:
        """The JSON body."""
        return {"error": {"code": self.code, "message": self.message, **self.detail}, **self.extra}


def busy(reason: str, retry_after_s: int) -> ApiError:
    """503 busy: at capacity, with when to retry."""
    return ApiError(503, "busy", f"{reason}; retry shortly", headers={"Retry-After": str(retry_after_s)})


def invalid(message: str) -> ApiError:
    """400 invalid_request."""
    return ApiError(400, "invalid_request", message)


def _respond(error: ApiError):
    ERRORS.labels(error.code).inc()
    annotate(code=error.code)
    response = jsonify(error.to_dict())
    response.status_code = error.status
    response.headers.update(error.headers)
    return response


def _from_http(exc: HTTPException):
    code = HTTP_CODES.get(exc.code or 500, "http_error")
    headers = dict(exc.get_headers()) if exc.code == 405 else {}
    headers.pop("Content-Type", None)
    message = exc.description or exc.name
    if exc.code == 429:  # Flask-Limiter's description is the limit, e.g. "10 per 1 minute"
        message = f"rate limit exceeded: at most {message} for this client; Retry-After says when to retry"
    return _respond(ApiError(exc.code or 500, code, message, headers=headers))


def _from_unexpected(exc: Exception):
    log.exception("unhandled error")
    return _respond(ApiError(500, "internal_error", "the service failed; the error was logged"))


def register(app: Flask) -> None:
    """Answer every error in JSON, never Flask's HTML pages or a stack trace."""
    app.register_error_handler(ApiError, _respond)
    app.register_error_handler(HTTPException, _from_http)
    app.register_error_handler(Exception, _from_unexpected)
