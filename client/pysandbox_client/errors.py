"""The service's error codes as exception classes: one base, a class per family, one per code.

Families: ClientError (the request was refused: 4xx but 422), ScriptError (422, or a failed
job: the script's own fault, with what it printed), ServerError (5xx) and its
UnavailableError (502/503: try again later, `retry_after` says when), CanceledError (a job
canceled by its client). A code this client does not know gets its status's family class,
so `except ScriptError` still catches it. tests/test_client.py checks that every code in the
service's /openapi.json has its class here, in the family of its status.
"""
from typing import Any, ClassVar

from pysandbox_client.models import RunOutput


class PySandboxError(Exception):
    """An error answered by the service (or no answer at all: ServiceUnreachableError)."""

    CODE: ClassVar[str] = ""
    """The code this class stands for (an instance's `code` is the one answered)."""

    def __init__(self, code: str, message: str, *, status: int | None = None,
                 request_id: str | None = None, retry_after: float | None = None,
                 traceback: str | None = None, output: RunOutput | None = None,
                 body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.status, self.request_id = code, message, status, request_id
        self.retry_after, self.traceback, self.output = retry_after, traceback, output
        self.body = body or {}

    def __str__(self) -> str:
        where = f" (request id {self.request_id})" if self.request_id else ""
        return f"{self.code}: {self.message}{where}"


class ServiceUnreachableError(PySandboxError):
    """No answer from the service: it could not be reached, or the connection failed."""

    CODE = "service_unreachable"


class ClientError(PySandboxError):
    """The service refused the request (4xx but 422); sending it again will not help."""


class ScriptError(PySandboxError):
    """The script's own fault (422, or a failed job): `output` holds what the run printed."""


class ServerError(PySandboxError):
    """The service's fault (5xx)."""


class UnavailableError(ServerError):
    """The service cannot run it now (502, 503); `retry_after` says when to try again."""


class CanceledError(PySandboxError):
    """The job was canceled by its client (DELETE /jobs/{id}); `output` holds what it printed."""

    CODE = "canceled"


class InvalidRequestError(ClientError):
    CODE = "invalid_request"


class InvalidFileError(ClientError):
    CODE = "invalid_file"


class CallbackNotAllowedError(ClientError):
    """The service does not allow this callback_url (or callbacks are off, or the run is not queued)."""

    CODE = "callback_not_allowed"


class BadRequestError(ClientError):
    CODE = "bad_request"


class UnauthorizedError(ClientError):
    CODE = "unauthorized"


class ForbiddenError(ClientError):
    CODE = "forbidden"


class NotFoundError(ClientError):
    CODE = "not_found"


class JobNotFoundError(ClientError):
    CODE = "job_not_found"


class MethodNotAllowedError(ClientError):
    CODE = "method_not_allowed"


class JobFinishedError(ClientError):
    CODE = "job_finished"


class PayloadTooLargeError(ClientError):
    CODE = "payload_too_large"


class UriTooLongError(ClientError):
    CODE = "uri_too_long"


class UnsupportedMediaTypeError(ClientError):
    CODE = "unsupported_media_type"


class HeadersTooLargeError(ClientError):
    CODE = "headers_too_large"


class RateLimitedError(ClientError):
    CODE = "rate_limited"


class ScriptSyntaxError(ScriptError):
    CODE = "syntax_error"


class NoMainError(ScriptError):
    CODE = "no_main"


class MainSignatureError(ScriptError):
    CODE = "main_signature"


class MainError(ScriptError):
    """main() raised: `traceback` shows the script's frames."""

    CODE = "main_error"


class InvalidResultError(ScriptError):
    CODE = "invalid_result"


class ScriptTimeoutError(ScriptError):
    CODE = "timeout"


class MemoryLimitError(ScriptError):
    CODE = "memory_limit"


class OutputLimitError(ScriptError):
    CODE = "output_limit"


class ResultTooLargeError(ScriptError):
    CODE = "result_too_large"


class NoResultError(ScriptError):
    CODE = "no_result"


class InternalError(ServerError):
    CODE = "internal_error"


class WorkerLostError(ServerError):
    CODE = "worker_lost"


class HttpNotImplementedError(ServerError):
    CODE = "not_implemented"


class UpstreamTimeoutError(ServerError):
    CODE = "upstream_timeout"


class HttpVersionNotSupportedError(ServerError):
    CODE = "http_version_not_supported"


class UpstreamUnavailableError(UnavailableError):
    CODE = "upstream_unavailable"


class BusyError(UnavailableError):
    CODE = "busy"


class SandboxUnavailableError(UnavailableError):
    CODE = "sandbox_unavailable"


class QueueUnavailableError(UnavailableError):
    CODE = "queue_unavailable"


class StorageBudgetExceededError(UnavailableError):
    CODE = "storage_budget_exceeded"


class StorageFullError(UnavailableError):
    CODE = "storage_full"


class MemoryUnavailableError(UnavailableError):
    """The run's memory limit cannot fit beside what the service holds: ask for less memory
    (retrying the same request does not help)."""

    CODE = "memory_unavailable"



class SessionNotFoundError(ClientError):
    CODE = "session_not_found"


class SessionBusyError(ClientError):
    """The session is running another call, or has calls queued: send the next when the last has
    answered, or queue it (session_submit)."""

    CODE = "session_busy"


class SessionEndedError(ClientError):
    """The session is over: `reason` says why (idle, lifetime, timeout, memory_limit, exited,
    deleted, shutdown, lost)."""

    CODE = "session_ended"

    @property
    def reason(self) -> str | None:
        """Why the session ended, as the service said."""
        error = self.body.get("error")
        return error.get("reason") if isinstance(error, dict) else None


class TooManySessionsError(ClientError):
    CODE = "too_many_sessions"


class SessionsUnavailableError(ServerError):
    """Queue mode, and no worker serves sessions now."""

    CODE = "sessions_unavailable"


class SessionsFullError(UnavailableError):
    CODE = "sessions_full"


def _with_codes(base: type[PySandboxError]) -> dict[str, type[PySandboxError]]:
    found = {base.CODE: base} if base.CODE else {}
    for sub in base.__subclasses__():
        found.update(_with_codes(sub))
    return found


ERRORS: dict[str, type[PySandboxError]] = _with_codes(PySandboxError)
"""Each known code's class."""


def family(status: int | None) -> type[PySandboxError]:
    """The class of an unknown code answered with this status."""
    if status == 422:
        return ScriptError
    if status in (502, 503):
        return UnavailableError
    if status is not None and 400 <= status < 500:
        return ClientError
    if status is not None and status >= 500:
        return ServerError
    return PySandboxError


def error_class(code: str, status: int | None) -> type[PySandboxError]:
    """The class for this code: its own when known, else its status's family."""
    return ERRORS.get(code) or family(status)
