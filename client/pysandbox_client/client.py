"""Client and AsyncClient: the service's endpoints as methods, on httpx.

Both build their requests and read the answers with the same functions below; only the I/O
differs. Every request sends an X-Request-ID (yours, or a new one) and every error reports
the id the service answered with. Answers that say "not now" (429, 503) are sent again after
their Retry-After, a bounded number of times (httpx-retries; see Retries).
"""
import asyncio
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Self, TypeVar

import httpx
from httpx_retries import Retry, RetryTransport
from pydantic import BaseModel, ValidationError

from pysandbox_client.errors import PySandboxError, ServiceUnreachableError, error_class
from pysandbox_client.models import (
    Base64File,
    ExecuteRequest,
    JobQueued,
    JobState,
    RunOutput,
    RunResult,
    SessionRunResult,
    SessionState,
    TextFile,
)

DEFAULT_URL = "http://localhost:8080"
URL_VARIABLE, KEY_VARIABLE = "PYSANDBOX_URL", "PYSANDBOX_API_KEY"
REQUEST_ID = "X-Request-ID"
DEFAULT_TIMEOUT = httpx.Timeout(10.0, read=90.0)
"""Reading waits for the run: at most 30 s on the service's defaults, plus a wait for a slot."""
M = TypeVar("M", bound=BaseModel)


class _NoInput(Enum):
    NO_INPUT = "NO_INPUT"


NO_INPUT = _NoInput.NO_INPUT
"""`input` left out: the service calls `main()`; any other value (None too) calls `main(input)`."""


@dataclass(frozen=True)
class Retries:
    """How requests answered 429 or 503 are sent again: after the answer's Retry-After (cut to
    `max_wait_s`), at most `attempts` times and `total_wait_s` of waiting in all. `attempts=0`
    turns retrying off. Nothing else is retried: a POST that got no answer may have run."""

    attempts: int = 3
    max_wait_s: float = 10.0
    total_wait_s: float = 30.0
    statuses: tuple[int, ...] = (429, 503)

    def transport(self) -> RetryTransport:
        """An httpx transport that retries so."""
        return RetryTransport(retry=Retry(
            total=self.attempts, allowed_methods=["GET", "POST", "DELETE"],
            status_forcelist=self.statuses, retry_on_exceptions=[], respect_retry_after_header=True,
            max_backoff_wait=self.max_wait_s, total_timeout=self.total_wait_s, backoff_factor=0.5))


def _execute_body(script: str, input: Any, stdin: str | None, files: Mapping[str, bytes | str] | None,
                  timeout: float | None, memory_mb: int | None,
                  callback_url: str | None = None) -> dict[str, Any]:
    """The JSON of POST /execute: bytes files as base64, str files as text; unset fields left out."""
    given: dict[str, Any] = {"script": script}
    if input is not NO_INPUT:
        given["input"] = input
    for name, value in (("stdin", stdin), ("timeout", timeout), ("memory_mb", memory_mb),
                        ("callback_url", callback_url)):
        if value is not None:
            given[name] = value
    if files is not None:
        given["files"] = {name: Base64File.of(content) if isinstance(content, bytes) else TextFile(
            content=content) for name, content in files.items()}
    return ExecuteRequest(**given).model_dump(mode="json", exclude_unset=True)


def _session_body(memory_mb: int | None, idle_timeout_s: float | None,
                  max_lifetime_s: float | None) -> dict[str, Any]:
    given = {"memory_mb": memory_mb, "idle_timeout_s": idle_timeout_s, "max_lifetime_s": max_lifetime_s}
    return {name: value for name, value in given.items() if value is not None}


def _headers(request_id: str | None) -> dict[str, str]:
    return {REQUEST_ID: request_id or uuid.uuid4().hex}


def _answer(response: httpx.Response, model: type[M]) -> M:
    """The answer as `model`, or the error it carries raised."""
    if response.is_success:
        return model.model_validate_json(response.content)
    raise error_from(response)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    return float(value) if value.isdigit() else None


def error_from(response: httpx.Response) -> PySandboxError:
    """The exception for an error answer: its code's class, with the run's output on a 422."""
    try:
        body = response.json()
    except ValueError:
        body = None
    detail = body.get("error") if isinstance(body, dict) else None
    if not isinstance(detail, dict) or not isinstance(detail.get("code"), str):
        detail = {"code": "http_error", "message": f"HTTP {response.status_code}: {response.text[:200]}"}
    output = None
    if response.status_code == 422:
        try:
            output = RunOutput.model_validate(body)
        except ValidationError:
            pass
    return error_class(detail["code"], response.status_code)(
        detail["code"], str(detail.get("message", "")), status=response.status_code,
        request_id=response.headers.get(REQUEST_ID) or response.request.headers.get(REQUEST_ID),
        retry_after=_retry_after(response), traceback=detail.get("traceback"), output=output,
        body=body if isinstance(body, dict) else {})


def job_error(state: JobState) -> PySandboxError:
    """The exception for a job that failed or was canceled, with the run's output if it ran."""
    detail = state.error
    code, message = (detail.code, detail.message) if detail else (state.status, f"the job {state.status}")
    try:
        output = RunOutput.model_validate(state.model_dump())
    except ValidationError:
        output = None
    return error_class(code, None)(code, message, request_id=state.request_id,
                                   traceback=detail.traceback if detail else None, output=output,
                                   body=state.model_dump(mode="json"))


def _result(state: JobState) -> RunResult:
    if state.status != "finished":
        raise job_error(state)
    return RunResult.model_validate(state.model_dump())


def poll_delays(longest_s: float) -> Iterator[float]:
    """Waits between polls of a job: from 0.1 s, half as long again each time, up to longest_s."""
    delay = 0.1
    while True:
        yield min(delay, longest_s)
        delay *= 1.5


def _deadline(timeout_s: float | None) -> float:
    return time.monotonic() + timeout_s if timeout_s is not None else float("inf")


def _check_deadline(deadline: float, job_id: str) -> None:
    if time.monotonic() > deadline:
        raise TimeoutError(f"job {job_id} did not end in time; it goes on (cancel it to stop it)")


def _settings(url: str | None, api_key: str | None) -> tuple[str, dict[str, str]]:
    """The base URL and headers: arguments first, then PYSANDBOX_URL and PYSANDBOX_API_KEY."""
    key = api_key or os.environ.get(KEY_VARIABLE)
    return (url or os.environ.get(URL_VARIABLE) or DEFAULT_URL,
            {"Authorization": f"Bearer {key}"} if key else {})


class Client:
    """The service, synchronously. Use it as a context manager, or close() it."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *,
                 retries: Retries = Retries(), timeout: float | httpx.Timeout = DEFAULT_TIMEOUT) -> None:
        base_url, headers = _settings(url, api_key)
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout,
                                  transport=retries.transport())

    def _send(self, method: str, path: str, request_id: str | None, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, headers=_headers(request_id), **kwargs)
        except httpx.TransportError as exc:
            raise ServiceUnreachableError(ServiceUnreachableError.CODE, f"{self._http.base_url}: {exc}",
                                          request_id=request_id) from exc

    def run(self, script: str, *, input: Any = NO_INPUT, stdin: str | None = None,
            files: Mapping[str, bytes | str] | None = None, timeout: float | None = None,
            memory_mb: int | None = None, request_id: str | None = None) -> RunResult:
        """Run the script now; what its main() returned, or its error raised."""
        body = _execute_body(script, input, stdin, files, timeout, memory_mb)
        return _answer(self._send("POST", "/execute", request_id, json=body), RunResult)

    def submit(self, script: str, *, input: Any = NO_INPUT, stdin: str | None = None,
               files: Mapping[str, bytes | str] | None = None, timeout: float | None = None,
               memory_mb: int | None = None, callback_url: str | None = None,
               request_id: str | None = None) -> JobQueued:
        """Queue the script as a job (POST /execute?async=1); its id is in the answer. With
        `callback_url`, the service POSTs the job's state there when it ends (check it with
        verify_signature)."""
        body = _execute_body(script, input, stdin, files, timeout, memory_mb, callback_url)
        return _answer(self._send("POST", "/execute", request_id, params={"async": "1"}, json=body),
                       JobQueued)

    def get(self, job_id: str, *, request_id: str | None = None) -> JobState:
        """The job's state."""
        return _answer(self._send("GET", f"/jobs/{job_id}", request_id), JobState)

    def cancel(self, job_id: str, *, request_id: str | None = None) -> JobState:
        """Cancel a queued or running job; its state, canceled."""
        return _answer(self._send("DELETE", f"/jobs/{job_id}", request_id), JobState)

    def wait(self, job_id: str, *, timeout: float | None = None, poll_interval: float = 2.0,
             on_poll: Callable[[JobState], None] | None = None) -> RunResult:
        """Poll the job until it ends (at most `timeout` s, polls at most `poll_interval` s apart);
        its result, or its error raised (CanceledError for a canceled job)."""
        deadline, delays = _deadline(timeout), poll_delays(poll_interval)
        while True:
            state = self.get(job_id)
            if on_poll:
                on_poll(state)
            if state.ended:
                return _result(state)
            _check_deadline(deadline, job_id)
            time.sleep(next(delays))

    def create_session(self, *, memory_mb: int | None = None, idle_timeout_s: float | None = None,
                       max_lifetime_s: float | None = None, request_id: str | None = None) -> SessionState:
        """Start a session: an interpreter whose state lasts from call to call (docs/sessions.md)."""
        body = _session_body(memory_mb, idle_timeout_s, max_lifetime_s)
        return _answer(self._send("POST", "/sessions", request_id, json=body), SessionState)

    def session_run(self, session_id: str, script: str, *, input: Any = NO_INPUT, stdin: str | None = None,
                    files: Mapping[str, bytes | str] | None = None, timeout: float | None = None,
                    request_id: str | None = None) -> SessionRunResult:
        """Run a call in the session; its result (main()'s, or the last expression's), or its error
        raised (SessionEndedError once the session is over, SessionBusyError while another call runs
        or is queued)."""
        body = _execute_body(script, input, stdin, files, timeout, None)
        return _answer(self._send("POST", f"/sessions/{session_id}/execute", request_id, json=body),
                       SessionRunResult)

    def session_submit(self, session_id: str, script: str, *, input: Any = NO_INPUT, stdin: str | None = None,
                       files: Mapping[str, bytes | str] | None = None, timeout: float | None = None,
                       callback_url: str | None = None, request_id: str | None = None) -> JobQueued:
        """Queue a call in the session as a job (?async=1), behind the calls sent before it; poll it
        with get() or wait() (its state has `session` once it ended)."""
        body = _execute_body(script, input, stdin, files, timeout, None, callback_url)
        return _answer(self._send("POST", f"/sessions/{session_id}/execute", request_id,
                                  params={"async": "1"}, json=body), JobQueued)

    def get_session(self, session_id: str, *, request_id: str | None = None) -> SessionState:
        """The session's state, limits, usage and expiry."""
        return _answer(self._send("GET", f"/sessions/{session_id}", request_id), SessionState)

    def delete_session(self, session_id: str, *, request_id: str | None = None) -> SessionState:
        """End the session now (its jail is killed); its state, ended."""
        return _answer(self._send("DELETE", f"/sessions/{session_id}", request_id), SessionState)

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class AsyncClient:
    """The service, with asyncio. Use it as an async context manager, or aclose() it."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *,
                 retries: Retries = Retries(), timeout: float | httpx.Timeout = DEFAULT_TIMEOUT) -> None:
        base_url, headers = _settings(url, api_key)
        self._http = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout,
                                       transport=retries.transport())

    async def _send(self, method: str, path: str, request_id: str | None, **kwargs: Any) -> httpx.Response:
        try:
            return await self._http.request(method, path, headers=_headers(request_id), **kwargs)
        except httpx.TransportError as exc:
            raise ServiceUnreachableError(ServiceUnreachableError.CODE, f"{self._http.base_url}: {exc}",
                                          request_id=request_id) from exc

    async def run(self, script: str, *, input: Any = NO_INPUT, stdin: str | None = None,
                  files: Mapping[str, bytes | str] | None = None, timeout: float | None = None,
                  memory_mb: int | None = None, request_id: str | None = None) -> RunResult:
        """Run the script now; what its main() returned, or its error raised."""
        body = _execute_body(script, input, stdin, files, timeout, memory_mb)
        return _answer(await self._send("POST", "/execute", request_id, json=body), RunResult)

    async def submit(self, script: str, *, input: Any = NO_INPUT, stdin: str | None = None,
                     files: Mapping[str, bytes | str] | None = None, timeout: float | None = None,
                     memory_mb: int | None = None, callback_url: str | None = None,
                     request_id: str | None = None) -> JobQueued:
        """Queue the script as a job (POST /execute?async=1); its id is in the answer. With
        `callback_url`, the service POSTs the job's state there when it ends (check it with
        verify_signature)."""
        body = _execute_body(script, input, stdin, files, timeout, memory_mb, callback_url)
        return _answer(await self._send("POST", "/execute", request_id, params={"async": "1"},
                                        json=body), JobQueued)

    async def get(self, job_id: str, *, request_id: str | None = None) -> JobState:
        """The job's state."""
        return _answer(await self._send("GET", f"/jobs/{job_id}", request_id), JobState)

    async def cancel(self, job_id: str, *, request_id: str | None = None) -> JobState:
        """Cancel a queued or running job; its state, canceled."""
        return _answer(await self._send("DELETE", f"/jobs/{job_id}", request_id), JobState)

    async def wait(self, job_id: str, *, timeout: float | None = None, poll_interval: float = 2.0,
                   on_poll: Callable[[JobState], None] | None = None) -> RunResult:
        """Poll the job until it ends (at most `timeout` s, polls at most `poll_interval` s apart);
        its result, or its error raised (CanceledError for a canceled job)."""
        deadline, delays = _deadline(timeout), poll_delays(poll_interval)
        while True:
            state = await self.get(job_id)
            if on_poll:
                on_poll(state)
            if state.ended:
                return _result(state)
            _check_deadline(deadline, job_id)
            await asyncio.sleep(next(delays))

    async def create_session(self, *, memory_mb: int | None = None, idle_timeout_s: float | None = None,
                             max_lifetime_s: float | None = None,
                             request_id: str | None = None) -> SessionState:
        """Start a session: an interpreter whose state lasts from call to call (docs/sessions.md)."""
        body = _session_body(memory_mb, idle_timeout_s, max_lifetime_s)
        return _answer(await self._send("POST", "/sessions", request_id, json=body), SessionState)

    async def session_run(self, session_id: str, script: str, *, input: Any = NO_INPUT,
                          stdin: str | None = None, files: Mapping[str, bytes | str] | None = None,
                          timeout: float | None = None, request_id: str | None = None) -> SessionRunResult:
        """Run a call in the session; its result (main()'s, or the last expression's), or its error
        raised (SessionEndedError once the session is over, SessionBusyError while another call runs
        or is queued)."""
        body = _execute_body(script, input, stdin, files, timeout, None)
        return _answer(await self._send("POST", f"/sessions/{session_id}/execute", request_id, json=body),
                       SessionRunResult)

    async def session_submit(self, session_id: str, script: str, *, input: Any = NO_INPUT,
                             stdin: str | None = None, files: Mapping[str, bytes | str] | None = None,
                             timeout: float | None = None, callback_url: str | None = None,
                             request_id: str | None = None) -> JobQueued:
        """Queue a call in the session as a job (?async=1), behind the calls sent before it; poll it
        with get() or wait() (its state has `session` once it ended)."""
        body = _execute_body(script, input, stdin, files, timeout, None, callback_url)
        return _answer(await self._send("POST", f"/sessions/{session_id}/execute", request_id,
                                        params={"async": "1"}, json=body), JobQueued)

    async def get_session(self, session_id: str, *, request_id: str | None = None) -> SessionState:
        """The session's state, limits, usage and expiry."""
        return _answer(await self._send("GET", f"/sessions/{session_id}", request_id), SessionState)

    async def delete_session(self, session_id: str, *, request_id: str | None = None) -> SessionState:
        """End the session now (its jail is killed); its state, ended."""
        return _answer(await self._send("DELETE", f"/sessions/{session_id}", request_id), SessionState)

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()
