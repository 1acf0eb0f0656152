"""The error catalog (each code declared once, with its status, what it means and its fixed
Retry-After), the one error type, and the handlers that turn every failure into its JSON shape.

The OpenAPI document's list of codes (`by_status`) and the code of each HTTP error Flask raises
(`HTTP_CODES`) are views of the catalog; the 422 codes are the jail's statuses of a script's fault.
"""
import logging
from dataclasses import dataclass
from typing import Any, Literal

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from api.logs import annotate
from jail import Status
from shared.metrics import ERRORS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Code:
    """One error code. `answered_by`: the app; the image's nginx (its own answers, documented
    here); or only a job's state (`canceled`). `werkzeug`: the code of Flask's HTTP error of
    this status."""

    name: str
    status: int
    meaning: str
    retry_after_s: int | None = None
    answered_by: Literal["app", "nginx", "job state"] = "app"
    werkzeug: bool = False

    def __call__(self, message: str, *, detail: dict[str, Any] | None = None,
                 extra: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
                 retry_after_s: int | None = None) -> "ApiError":
        """This error with a message (and detail in `error`, extra fields beside it, headers)."""
        retry_after_s = retry_after_s if retry_after_s is not None else self.retry_after_s
        fixed = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else {}
        return ApiError(self, message, detail=detail, extra=extra, headers={**fixed, **(headers or {})})


CATALOG: dict[str, Code] = {}


def _declare(name: str, status: int, meaning: str, **options: Any) -> Code:
    code = CATALOG[name] = Code(name, status, meaning, **options)
    return code


INVALID_REQUEST = _declare(
    "invalid_request", 400, "the body is not JSON or not an object; `script` missing, not a string or "
    "blank; a bad `timeout`/`memory_mb`/`stdin`/`files`; an unknown field; `async` not 0/1", werkzeug=True)
INVALID_FILE = _declare(
    "invalid_file", 400, "a file's name is not allowed (`..`, absolute, bad characters, too deep or "
    "long, under `out/`, or under another file) or its base64 is not valid")
CALLBACK_NOT_ALLOWED = _declare(
    "callback_not_allowed", 400, "`callback_url` refused: callbacks are off (PYSANDBOX_CALLBACK_HOSTS), "
    "its host is not listed, it resolves to a private, loopback, link-local or reserved address no "
    "listed CIDR allows, it is not http(s), or the run is not queued (`?async=1`)")
_declare("bad_request", 400, "a malformed HTTP request (request line, `Host`, a header), refused by "
         "the image's nginx", answered_by="nginx")
UNAUTHORIZED = _declare(
    "unauthorized", 401, "keys are on and the request has no key, a malformed one, two different ones "
    "or an unknown one (`WWW-Authenticate` says the scheme)")
FORBIDDEN = _declare(
    "forbidden", 403, "keys are on and a tenant's key asks for an operator's path (`/metrics`): it "
    "needs a key with the `operator` role")
_declare("not_found", 404, "unknown path", werkzeug=True)
JOB_NOT_FOUND = _declare("job_not_found", 404, "unknown or expired job id")
_declare("method_not_allowed", 405, "wrong method (`Allow` says which)", werkzeug=True)
JOB_FINISHED = _declare("job_finished", 409, "DELETE of a job that already finished or failed")
CANCELED = _declare("canceled", 409, "the job was canceled by its client", answered_by="job state")
PAYLOAD_TOO_LARGE = _declare(
    "payload_too_large", 413, "body over its cap (the image's nginx refuses it before reading it), or "
    "script, input, stdin or files over theirs (PYSANDBOX_MAX_SCRIPT_BYTES, _MAX_INPUT_BYTES, "
    "_MAX_STDIN_BYTES, _MAX_FILES, half of _TMP_MB)", werkzeug=True)
_declare("uri_too_long", 414, "the request line is over 8 KiB (nginx)", answered_by="nginx")
UNSUPPORTED_MEDIA_TYPE = _declare("unsupported_media_type", 415, "not `Content-Type: application/json`",
                                  werkzeug=True)
_declare("headers_too_large", 431, "a header line over 8 KiB, or more header lines than 32 KiB hold "
         "(nginx)", answered_by="nginx")
_declare("rate_limited", 429, "over this client's rate limit (PYSANDBOX_RATE_LIMIT or its key's own); "
         "`Retry-After` says when to retry", werkzeug=True)
SCRIPT_FAULTS = {
    Status.SYNTAX_ERROR: "the script does not compile (or is not UTF-8)",
    Status.NO_MAIN: "no top-level callable `main`",
    Status.MAIN_SIGNATURE: "`main` cannot be called as the request asks: it needs an argument and the "
                           "request has no `input`, or it takes none and the request has one",
    Status.MAIN_ERROR: "`main()` (or the script at import time) raised; `error.traceback` shows the "
                       "script's frames",
    Status.INVALID_RESULT: "`main()` returned something JSON cannot hold",
    Status.TIMEOUT: "wall time (or CPU time) over the limit; the whole jail is killed",
    Status.MEMORY_LIMIT: "over `memory_mb`, all of the run's processes together",
    Status.OUTPUT_LIMIT: "stdout + stderr over 1 MiB; output kept up to the cap, `output_truncated: true`",
    Status.RESULT_TOO_LARGE: "`main()`'s JSON over 1 MiB",
    Status.NO_RESULT: "the script ended before `main()` returned",
}
"""The 422 codes: every way a run ends that is the script's own fault."""
assert set(SCRIPT_FAULTS) == set(Status) - {Status.OK, Status.CANCELED, Status.MEMORY_UNAVAILABLE}, \
    "a jail status has no 422 code"
for _status, _meaning in SCRIPT_FAULTS.items():
    _declare(_status.value, 422, _meaning)
INTERNAL_ERROR = _declare("internal_error", 500, "the service's own fault (details in its log)")
WORKER_LOST = _declare("worker_lost", 500, "sync request through the queue whose worker died")
_declare("not_implemented", 501, "a `Transfer-Encoding` other than chunked (nginx)", answered_by="nginx")
_declare("upstream_unavailable", 502, "the image's nginx could not reach gunicorn (starting, stopping "
         "or restarting); `Retry-After` says when to retry", answered_by="nginx")
BUSY = _declare("busy", 503, "at capacity (every run slot taken, or no memory free for the run's limit); "
                "`Retry-After` says when to retry")
MEMORY_UNAVAILABLE = _declare(
    "memory_unavailable", 503, "the run's memory limit cannot fit beside what this service holds, now "
    "or later (GET /health's `memory`): ask for less memory; a job's worker also ends a job so when no "
    "memory came free within 60 s")
SANDBOX_UNAVAILABLE = _declare("sandbox_unavailable", 503, "the jail failed its self-test", retry_after_s=30)
QUEUE_UNAVAILABLE = _declare("queue_unavailable", 503, "no Redis configured, or Redis unreachable",
                             retry_after_s=5)
STORAGE_BUDGET_EXCEEDED = _declare(
    "storage_budget_exceeded", 503, "queued runs: this client's jobs would hold more of the queue's "
    "storage than its budget (PYSANDBOX_STORAGE_BUDGET_PER_CLIENT_MB); a job counts its input and the "
    "largest result its limits allow until it ends, then what it stored until its result expires")
STORAGE_FULL = _declare("storage_full", 503, "queued runs: all clients' jobs would hold more than the "
                        "storage budget (PYSANDBOX_STORAGE_BUDGET_MB)")
_declare("upstream_timeout", 504, "gunicorn did not answer within the longest run's time + 30 s (nginx)",
         answered_by="nginx")
_declare("http_version_not_supported", 505, "not HTTP/1.0 or 1.1 (nginx)", answered_by="nginx")
SESSION_NOT_FOUND = _declare("session_not_found", 404, "unknown session id, another client's, or an "
                             "ended one whose record has expired (PYSANDBOX_SESSION_RECORD_TTL_S)")
SESSION_BUSY = _declare("session_busy", 409, "a call to a session that is running another call, or has "
                        "calls queued (`?async=1`): a session runs its calls one at a time, in the order "
                        "accepted; send the next when the last has answered, or queue it")
SESSION_ENDED = _declare("session_ended", 410, "the session is over; `error.reason` says why: `idle`, "
                         "`lifetime`, `timeout` (a call ignored its interrupt), `memory_limit`, `exited`, "
                         "`deleted`, `shutdown` or `lost`")
TOO_MANY_SESSIONS = _declare("too_many_sessions", 429, "this client has PYSANDBOX_MAX_SESSIONS_PER_CLIENT "
                             "sessions open: delete one (or let one expire) first")
SESSIONS_UNAVAILABLE = _declare("sessions_unavailable", 501, "this API only enqueues runs "
                                "(PYSANDBOX_EXECUTE_VIA_QUEUE) and no worker serves sessions now (none "
                                "running, or workers of a version without sessions)")
SESSIONS_FULL = _declare("sessions_full", 503, "PYSANDBOX_MAX_SESSIONS sessions are open; `Retry-After` "
                         "says when to retry")

HTTP_CODES = {code.status: code for code in CATALOG.values() if code.werkzeug}
"""The code of each HTTP error Flask raises; any other status is `http_error`."""


def by_status() -> dict[int, dict[str, str]]:
    """Every status an error is answered with, and its codes with their meaning (the OpenAPI
    document's view). A job's state alone carries `canceled`, never as an answer's status."""
    statuses: dict[int, dict[str, str]] = {}
    for code in CATALOG.values():
        if code.answered_by != "job state":
            statuses.setdefault(code.status, {})[code.name] = code.meaning
    return statuses


class ApiError(Exception):
    """A failure answered as {"error": {"code", "message", ...}, ...extra} with its code's status."""

    def __init__(self, code: Code, message: str, *, detail: dict[str, Any] | None = None,
                 extra: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = code.status, code.name, message
        self.detail, self.extra, self.headers = detail or {}, extra or {}, headers or {}

    def to_dict(self) -> dict[str, Any]:
        """The JSON body."""
        return {"error": {"code": self.code, "message": self.message, **self.detail}, **self.extra}


def busy(reason: str, retry_after_s: int) -> ApiError:
    """503 busy: at capacity, with when to retry."""
    return BUSY(f"{reason}; retry shortly", retry_after_s=retry_after_s)


def invalid(message: str) -> ApiError:
    """400 invalid_request."""
    return INVALID_REQUEST(message)


def respond(error: ApiError) -> Response:
    """The error's answer, counted and noted in the request's log line."""
    ERRORS.labels(error.code).inc()
    annotate(code=error.code)
    response = jsonify(error.to_dict())
    response.status_code = error.status
    response.headers.update(error.headers)
    return response


def _from_http(exc: HTTPException) -> Response:
    status = exc.code or 500
    code = HTTP_CODES.get(status) or Code("http_error", status, "")
    headers = dict(exc.get_headers()) if status == 405 else {}
    headers.pop("Content-Type", None)
    message = exc.description or exc.name
    if status == 429:  # Flask-Limiter's description is the limit, e.g. "10 per 1 minute"
        message = f"rate limit exceeded: at most {message} for this client; Retry-After says when to retry"
    return respond(code(message, headers=headers))


def _from_unexpected(exc: Exception) -> Response:
    log.exception("unhandled error")
    return respond(INTERNAL_ERROR("the service failed; the error was logged"))


def register(app: Flask) -> None:
    """Answer every error in JSON, never Flask's HTML pages or a stack trace."""
    app.register_error_handler(ApiError, respond)
    app.register_error_handler(HTTPException, _from_http)
    app.register_error_handler(Exception, _from_unexpected)
