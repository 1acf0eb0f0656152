"""The OpenAPI 3.1 document, served at GET /openapi.json: api/schemas.py's models plus what no model says.

Bodies come from the models' JSON Schemas (one declaration); this module adds the paths, the
statuses each can answer with the error codes each status carries (ERROR_CODES, also the
tables of the README and docs/api.md: tests/service/test_openapi.py compares them), headers,
examples and the async flow as links. See the note at the top of api/schemas.py for why it is assembled here.
"""
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from api.errors import by_status
from api.request_ids import HEADER as REQUEST_ID
from api.schemas import (
    Error,
    ExecuteQuery,
    ExecuteRequest,
    Health,
    JobQueued,
    JobState,
    Probe,
    RunError,
    RunResult,
    SessionRequest,
    SessionRunError,
    SessionRunResult,
    SessionState,
)
from shared.settings import DEFAULTS

ERROR_CODES = by_status()
"""Every status an error is answered with, and its codes (a view of api/errors.py's catalog)."""

MESSAGES_422 = {
    "syntax_error": "the script does not compile: invalid syntax (line 1)",
    "no_main": "the script defines no top-level callable main()",
    "main_signature": "main() takes no argument but the request has an input; define main(input)",
    "main_error": "main() raised ZeroDivisionError: division by zero",
    "invalid_result": "main() returned a set, which JSON cannot hold",
    "timeout": f"the script ran longer than its {DEFAULTS.default_timeout_s:g} s time limit",
    "memory_limit": f"the script used more than its {DEFAULTS.default_memory_mb} MB memory limit",
    "output_limit": f"the script printed more than {DEFAULTS.max_output_bytes} bytes",
    "result_too_large": f"main() returned more than {DEFAULTS.max_result_bytes} bytes of JSON",
    "no_result": "the script exited (status 0) before main() returned",
}
RUN_FIELDS = {"stdout": "", "stderr": "", "output_truncated": False, "duration_ms": 4, "cpu_ms": 2,
              "peak_memory_mb": 0.3, "files": [], "files_truncated": False,
              "enforcement": "cgroup v2"}
MODELS: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = [
    (ExecuteRequest, "validation"), (RunResult, "serialization"), (RunError, "serialization"),
    (Error, "serialization"), (JobQueued, "serialization"), (JobState, "serialization"),
    (Health, "serialization"), (SessionRequest, "validation"), (SessionState, "serialization"),
    (SessionRunResult, "serialization"), (SessionRunError, "serialization"), (Probe, "serialization")]
PROBES = {
    "/livez": ("livez", "Liveness: this process answers",
               "Always 200 while the process answers HTTP: never checks Redis or workers, so that an "
               "outage does not become a restart storm.", None),
    "/readyz": ("readyz", "Readiness: this replica can take work now",
                "200 when the jail passed its self-test (where scripts run here), the queue answers (on "
                "an API that only enqueues) and the process is not draining (SIGTERM). Workers being "
                "away does not make it 503: the API keeps taking jobs while workers scale up.",
                "Not ready: `draining`, `redis_unreachable` or `selftest_failed`."),
    "/startupz": ("startupz", "Startup: the slow start is over",
                  "200 once the self-test passed and the warm jails were all ready once (at once on an "
                  "API that only enqueues).", "Not started yet: `warming` or `selftest_failed`."),
}
"""The probes (api/probes.py): operationId, summary, description, the 503's description."""


def _ref(name: str, kind: str = "schemas") -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _headers(*names: str) -> dict[str, Any]:
    return {name: _ref(name, "headers") for name in (REQUEST_ID, *names)}


def _json(schema: dict[str, Any], examples: dict[str, Any] | None = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if examples:
        media["examples"] = {name: {"value": value} for name, value in examples.items()}
    return {"application/json": media}


def _error(status: int, *codes: str, headers: tuple[str, ...] = ()) -> dict[str, Any]:
    """The response of an error status limited to these codes, one example each."""
    codes = codes or tuple(ERROR_CODES[status])
    base = "RunError" if status == 422 else "Error"
    schema = {"allOf": [_ref(base), {"type": "object", "properties": {
        "error": {"type": "object", "properties": {"code": {"enum": list(codes)}}}}}]}
    examples: dict[str, dict[str, Any]] = {
        code: {"error": {"code": code, "message": MESSAGES_422.get(code, ERROR_CODES[status][code])},
               **(RUN_FIELDS if status == 422 else {})} for code in codes}
    if "main_error" in examples:
        examples["main_error"]["error"]["traceback"] = (
            'Traceback (most recent call last):\n  File "<script>", line 2, in main\n'
            "ZeroDivisionError: division by zero\n")
    description = "; ".join(f"`{code}`: {ERROR_CODES[status][code]}" for code in codes)
    return {"description": description, "headers": _headers(*headers), "content": _json(schema, examples)}


KEYED: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}]
"""With keys on, protected operations take either header; the public ones (api/clients.py
PUBLIC_PATHS) none. With keys off every operation is open, and the document says so."""
RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


@dataclass(frozen=True)
class Access:
    """What the service as configured asks of a client: a key, and rate limits."""

    keys: bool = True
    rate_limits: bool = True

    @property
    def security(self) -> list[dict[str, list[str]]]:
        """A protected operation's `security`: a key when keys are on, none (`[]`) when off."""
        return KEYED if self.keys else []

    def client_errors(self) -> dict[str, Any]:
        """The answers of a protected operation to a client without a valid key or over its limit."""
        errors = {"401": _error(401, headers=("WWW-Authenticate",))} if self.keys else {}
        if self.rate_limits:
            errors["429"] = _error(429, "rate_limited", headers=("Retry-After", *RATE_HEADERS))
        return errors


def _job_path(access: Access) -> dict[str, Any]:
    job_id = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"},
              "description": "The id POST /execute?async=1 answered (a UUID)."}
    state = {"description": "The job's state.", "headers": _headers(),
             "content": _json(_ref("JobState"), {
                 "finished": {"id": "5b7e2c1e-8f3a-4d5e-9b1a-2c3d4e5f6a7b", "status": "finished",
                              "request_id": "4f9d2a", "result": 45, **RUN_FIELDS},
                 "canceled": {"id": "5b7e2c1e-8f3a-4d5e-9b1a-2c3d4e5f6a7b", "status": "canceled",
                              "request_id": "4f9d2a", "error": {
                                  "code": "canceled", "message": "the run was canceled; its jail was killed"},
                              **RUN_FIELDS},
                 "session_ended": {"id": "5b7e2c1e-8f3a-4d5e-9b1a-2c3d4e5f6a7b", "status": "failed",
                                   "request_id": "4f9d2a", "error": {
                                       "code": "session_ended", "message": "the session ended: deleted",
                                       "reason": "deleted"},
                                   "session": {**SESSION_EXAMPLE, "state": "ended", "reason": "deleted"}}}),
             "links": {"CancelJob": {"operationId": "cancelJob",
                                     "parameters": {"job_id": "$request.path.job_id"}}}}
    common = {**access.client_errors(), "404": _error(404, "job_not_found"),
              "500": _error(500, "internal_error"),
              "503": _error(503, "queue_unavailable", headers=("Retry-After",))}
    return {
        "parameters": [job_id],
        "get": {"operationId": "getJob", "summary": "A queued run's state; its result or error once it ended",
                "description": "`status` is `queued`, `running`, `finished` (with the fields of a sync 200), "
                               "`failed` (with the error of a sync request, and the output when the script "
                               "ran) or `canceled` (error code `canceled`). `request_id` is the X-Request-ID "
                               "of the POST that queued it. Kept PYSANDBOX_RESULT_TTL_S (an hour) after it "
                               "ends. A session's queued call adds `session` once it ended; it fails "
                               "`session_ended` (with `reason`) when its session ended before its turn.",
                "parameters": [_ref("RequestId", "parameters")], "security": access.security,
                "responses": {"200": state, **common}},
        "delete": {"operationId": "cancelJob", "summary": "Cancel a queued or running run",
                   "description": "A queued job never runs; a running job's jail is killed within a second "
                                  "and its worker takes the next job. Answers the job's state, `canceled` "
                                  "(again, for a job already canceled).",
                   "parameters": [_ref("RequestId", "parameters")], "security": access.security,
                   "responses": {"200": state, "409": _error(409), **common}},
    }


def _queued() -> dict[str, Any]:
    """The 202 of `?async=1` (POST /execute, and a session's call)."""
    return {"description": "`?async=1`: queued. Poll `Location` (GET /jobs/{job_id}).",
            "headers": _headers("Location"),
            "content": _json(_ref("JobQueued"), {"queued": {"id": "5b7e2c1e-8f3a-4d5e-9b1a-2c3d4e5f6a7b",
                                                            "status": "queued"}}),
            "links": {name: {"operationId": op, "parameters": {"job_id": "$response.body#/id"}}
                      for name, op in (("GetJob", "getJob"), ("CancelJob", "cancelJob"))}}


def _execute_path(access: Access) -> dict[str, Any]:
    body_examples = {
        "print_vs_result": {"script": 'print("at import")\ndef main():\n    print("in main")\n'
                                      '    return {"answer": 42}'},
        "with_limits": {"script": "def main():\n    return sum(range(10))", "timeout": 10, "memory_mb": 128},
    }
    return {"post": {
        "operationId": "execute", "summary": "Run a script's main() in a fresh jail, or queue it",
        "description": "The script is executed as module `script`, then `main()` is called; its return "
                       "value is `result`, what it printed is `stdout`/`stderr`, never `result`.",
        "parameters": [{"name": "async", "in": "query", "required": False,
                        "schema": _async_schema(),
                        "description": "`1` queues the run (202); `0` or absent runs it now."},
                       _ref("RequestId", "parameters")],
        "requestBody": {"required": True, "content": _json(_ref("ExecuteRequest"), body_examples)},
        "security": access.security,
        "responses": {
            **access.client_errors(),
            "200": {"description": "main() returned a JSON value. `Server-Timing: slot;dur=<ms>` says "
                                   "how long the request waited for a run slot.", "headers": _headers(),
                    "content": _json(_ref("RunResult"), {"print_vs_result": {
                        "result": {"answer": 42}, **RUN_FIELDS, "stdout": "at import\nin main\n"}})},
            "202": _queued(),
            "400": _error(400), "413": _error(413), "415": _error(415), "422": _error(422),
            "500": _error(500), "503": _error(503, headers=("Retry-After",)),
        }}}


SESSION_ID = "0b9c7f3e-5a1d-4c2b-8e6f-1a2b3c4d5e6f"
SESSION_EXAMPLE = {"id": SESSION_ID, "state": "open", "reason": None, "memory_mb": 256,
                   "idle_timeout_s": 600.0, "max_lifetime_s": 3600.0, "created_at": 1796290000.0,
                   "expires_at": 1796290600.0,
                   "usage": {"calls": 1, "cpu_ms": 2, "peak_memory_mb": 44.3}}


def _session_paths(access: Access) -> dict[str, Any]:
    """POST /sessions, GET and DELETE /sessions/{session_id}, POST /sessions/{session_id}/execute."""
    session_id = {"name": "session_id", "in": "path", "required": True, "schema": {"type": "string"},
                  "description": "The id POST /sessions answered (a UUID)."}
    state = {"description": "The session's state.", "headers": _headers(),
             "content": _json(_ref("SessionState"), {"open": SESSION_EXAMPLE})}
    links = {name: {"operationId": op, "parameters": {"session_id": "$response.body#/id"}}
             for name, op in (("GetSession", "getSession"), ("DeleteSession", "deleteSession"),
                              ("ExecuteInSession", "executeInSession"))}
    many = _error(429, *(("rate_limited",) if access.rate_limits else ()), "too_many_sessions",
                  headers=("Retry-After", *(RATE_HEADERS if access.rate_limits else ())))
    known = {"404": _error(404, "session_not_found"), "410": _error(410, "session_ended"),
             "500": _error(500, "internal_error"),
             "503": _error(503, "queue_unavailable", headers=("Retry-After",))}
    request_id = [_ref("RequestId", "parameters")]
    return {
        "/sessions": {"post": {
            "operationId": "createSession", "summary": "Start a session: an interpreter whose state lasts "
                                                      "from call to call, in a jail of its own",
            "description": "Its memory limit holds for its whole life; it ends after `idle_timeout_s` "
                           "without a call or `max_lifetime_s` after it started (clamped to the "
                           "server's maximums), or on DELETE. docs/sessions.md.",
            "parameters": request_id, "security": access.security,
            "requestBody": {"required": False, "content": _json(_ref("SessionRequest"), {
                "limits": {"memory_mb": 256, "idle_timeout_s": 300, "max_lifetime_s": 1800}})},
            "responses": {**access.client_errors(), "429": many,
                          "201": {"description": "Started. `Location` is the session's URL.",
                                  "headers": _headers("Location"),
                                  "content": _json(_ref("SessionState"), {"open": SESSION_EXAMPLE}),
                                  "links": links},
                          "400": _error(400, "invalid_request"), "415": _error(415),
                          "500": _error(500, "internal_error"), "501": _error(501, "sessions_unavailable"),
                          "503": _error(503, "busy", "memory_unavailable", "sandbox_unavailable",
                                        "sessions_full", "queue_unavailable", headers=("Retry-After",))}}},
        "/sessions/{session_id}": {
            "parameters": [session_id],
            "get": {"operationId": "getSession", "summary": "A session's state, limits, usage and expiry",
                    "description": "An ended session answers 410 `session_ended` with its reason and its "
                                   "last state (`session`) while its record is kept "
                                   "(PYSANDBOX_SESSION_RECORD_TTL_S), then 404.",
                    "parameters": request_id, "security": access.security,
                    "responses": {**access.client_errors(), "200": state, **known}},
            "delete": {"operationId": "deleteSession", "summary": "End a session now: its jail is killed",
                       "description": "Answers its state, `ended` with reason `deleted`.",
                       "parameters": request_id, "security": access.security,
                       "responses": {**access.client_errors(), "200": state, **known}}},
        "/sessions/{session_id}/execute": {
            "parameters": [session_id],
            "post": {
                "operationId": "executeInSession", "summary": "Run a call in the session",
                "description": "The body is POST /execute's (its `memory_mb` is ignored: the session's "
                               "holds). What earlier calls defined is there. `result` is `main()`'s value "
                               "when the call defines `main`, else the value of its last expression (its "
                               "`repr()` when not JSON), else null. A call past its `timeout` gets "
                               "`KeyboardInterrupt` (422 `timeout`, the session goes on); one that does "
                               "not stop within 2 s more ends the session. `?async=1` queues the call "
                               "as a job (202, GET /jobs/{job_id}, with `session`) behind the calls "
                               "accepted before it: calls run in the order accepted. A sync call while "
                               "another runs or waits: 409 `session_busy`, at once.",
                "parameters": [{"name": "async", "in": "query", "required": False, "schema": _async_schema(),
                                "description": "`1` queues the call (202); `0` or absent runs it now."},
                               *request_id], "security": access.security,
                "requestBody": {"required": True, "content": _json(_ref("ExecuteRequest"), {
                    "cell": {"script": "import pandas as pd\nframe = pd.DataFrame({'a': [1, 2]})\n"
                                       "int(frame.a.sum())"}})},
                "responses": {
                    **access.client_errors(),
                    "200": {"description": "The call returned (or ended) with a JSON value.",
                            "headers": _headers(),
                            "content": _json(_ref("SessionRunResult"), {"cell": {
                                "result": 3, **RUN_FIELDS, "session": SESSION_EXAMPLE}})},
                    "400": _error(400, "invalid_request", "invalid_file", "callback_not_allowed"),
                    "202": _queued(),
                    "409": _error(409, "session_busy"),
                    "413": _error(413), "415": _error(415),
                    "422": _session_error_422(),
                    **known,
                    "503": _error(503, "queue_unavailable", "busy", "storage_budget_exceeded",
                                  "storage_full", headers=("Retry-After",))}}},
    }


def _session_error_422() -> dict[str, Any]:
    """POST /execute's 422, with the session's state beside the run's output."""
    response = _error(422)
    media = response["content"]["application/json"]
    media["schema"]["allOf"][0] = _ref("SessionRunError")
    for example in media["examples"].values():
        example["value"]["session"] = SESSION_EXAMPLE
    return response


def _async_schema() -> dict[str, Any]:
    field = ExecuteQuery.model_json_schema()["properties"]["async"]
    return {"type": "string", "pattern": field["pattern"], "default": ""}


def _html_page(operation_id: str, summary: str, assets: str) -> dict[str, Any]:
    """A GET path that answers an HTML page whose own files are under `assets`."""
    return {"get": {
        "operationId": operation_id, "summary": summary,
        "parameters": [_ref("RequestId", "parameters")],
        "responses": {"200": {"description": f"An HTML page; its assets are under {assets}.",
                              "headers": _headers(),
                              "content": {"text/html": {"schema": {"type": "string"}}}},
                      "500": _error(500, "internal_error")}}}


def _probe_paths() -> dict[str, Any]:
    """GET /livez, /readyz, /startupz: public, never rate limited."""
    probe = {"headers": _headers(), "content": _json(_ref("Probe"))}
    paths = {}
    for path, (operation_id, summary, description, unavailable) in PROBES.items():
        responses = {"200": {"description": "OK.", **probe}, "500": _error(500, "internal_error")}
        if unavailable:
            responses["503"] = {"description": unavailable, **probe}
        paths[path] = {"get": {"operationId": operation_id, "summary": summary, "description": description,
                               "parameters": [_ref("RequestId", "parameters")], "responses": responses}}
    return paths


def _simple_paths(access: Access) -> dict[str, Any]:
    health = {"headers": _headers(), "content": _json(_ref("Health"))}
    return {
        **_probe_paths(),
        "/health": {"get": {
            "operationId": "health", "summary": "Whether scripts can run here",
            "parameters": [_ref("RequestId", "parameters")],
            "responses": {"200": {"description": "The jail passed its escape probes.", **health},
                          "500": _error(500, "internal_error"),
                          "503": {"description": "The jail failed its self-test (or, on an API that only "
                                                 "enqueues, no worker or no Redis).", **health}}}},
        "/metrics": {"get": {
            "operationId": "metrics", "summary": "Prometheus metrics (text format 0.0.4)",
            "description": "Counters, histograms and gauges of runs, requests, refusals, warm jails and "
                           "the queue: docs/operating.md lists them. Not served "
                           "(404) with PYSANDBOX_METRICS=false. With API keys on it needs a key with "
                           "the `operator` role (give Prometheus one: `authorization` in its scrape "
                           "config); a tenant's key is 403 `forbidden`.",
            "parameters": [_ref("RequestId", "parameters")], "security": access.security,
            "responses": {"200": {"description": "The Prometheus text exposition format.",
                                  "headers": _headers(),
                                  "content": {"text/plain": {"schema": {"type": "string"}}}},
                          **access.client_errors(), **({"403": _error(403)} if access.keys else {}),
                          "500": _error(500, "internal_error")}}},
        "/openapi.json": {"get": {
            "operationId": "openapi", "summary": "This document",
            "parameters": [_ref("RequestId", "parameters")],
            "responses": {"200": {"description": "OpenAPI 3.1", "headers": _headers(),
                                  "content": {"application/json": {"schema": {"type": "object"}}}},
                          "500": _error(500, "internal_error")}}},
        "/": _html_page("playground", "The playground: a page to write and run scripts in "
                                      "(served from this service)", "/playground/"),
        "/docs": _html_page("docs", "Interactive documentation (Swagger UI, served from this service)",
                            "/docs/"),
    }


def _components(access: Access) -> dict[str, Any]:
    _, schemas = models_json_schema(MODELS, ref_template="#/components/schemas/{model}")
    return {
        "schemas": schemas["$defs"],
        "parameters": {"RequestId": {
            "name": REQUEST_ID, "in": "header", "required": False, "schema": {"type": "string"},
            "description": "Your id for this request: kept when 1-128 characters of [A-Za-z0-9._-], "
                           "otherwise replaced by a new one (a uuid4 in hex)."}},
        "headers": {
            REQUEST_ID: {"required": True,
                         "description": "The request's id (yours if well-formed, else made); on every "
                                        "response, errors too.",
                         "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"}},
            "Retry-After": {"required": True, "description": "Seconds to wait before retrying.",
                            "schema": {"type": "string", "pattern": "^[0-9]+$"}},
            "Location": {"required": True, "description": "The job's URL: /jobs/{job_id}.",
                         "schema": {"type": "string"}},
            "Allow": {"required": True, "description": "The methods the path answers.",
                      "schema": {"type": "string"}},
            "WWW-Authenticate": {"required": True, "description": 'The scheme: `Bearer realm="pysandbox"`, '
                                 'with `error="invalid_token"` for an unknown key.',
                                 "schema": {"type": "string"}},
            "X-RateLimit-Limit": {"required": True, "description": "Requests allowed in the window.",
                                  "schema": {"type": "string", "pattern": "^[0-9]+$"}},
            "X-RateLimit-Remaining": {"required": True, "description": "Requests left in the window.",
                                      "schema": {"type": "string", "pattern": "^[0-9]+$"}},
            "X-RateLimit-Reset": {"required": True, "description": "When the window resets (Unix time).",
                                  "schema": {"type": "string", "pattern": "^[0-9]+$"}},
        },
        "securitySchemes": {} if not access.keys else {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "`Authorization: Bearer <key>`: an API key (PYSANDBOX_API_KEYS)."},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                       "description": "The same key in `X-API-Key`."},
        },
        "responses": {
            "NotFound": _error(404, "not_found"),
            "MethodNotAllowed": _error(405, headers=("Allow",)),
            **_proxy_errors(),
        },
    }


def _proxy_errors() -> dict[str, Any]:
    """What the image's nginx answers itself, on any path (docs/security.md, "Slow clients")."""
    return {"BadRequest": _error(400, "bad_request"), "UriTooLong": _error(414),
            "HeadersTooLarge": _error(431), "NotImplemented": _error(501),
            "UpstreamUnavailable": _error(502, headers=("Retry-After",)), "UpstreamTimeout": _error(504),
            "HttpVersionNotSupported": _error(505)}


def document(access: Access = Access()) -> dict[str, Any]:
    """The whole OpenAPI 3.1 document of the service as configured: with keys off (the default)
    no operation declares security or a 401; without rate limits none declares a 429."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "PySandbox", "version": "1",
                 "description": "Runs an untrusted Python script's `main()` in an nsjail sandbox and answers "
                                "what it returned, with what it printed kept apart. Every error is "
                                "`{\"error\": {\"code\", \"message\"}}`; any path answers 404 `not_found` "
                                "when unknown and 405 `method_not_allowed` for a wrong method "
                                "(components.responses). In the image, nginx in front of the app answers "
                                "malformed or oversized requests itself (400 `bad_request`, 413, 414, 431, "
                                "501, 505) and 502 `upstream_unavailable` or 504 `upstream_timeout` when the "
                                "app does not answer, in the same shape (components.responses). "
                                "Every response carries `X-Request-ID`. When the service has API "
                                "keys, every operation but /health, the probes, /openapi.json and /docs "
                                "needs one (401 `unauthorized` first, also for unknown paths), and "
                                "rate limits answer 429 `rate_limited`. `POST /mcp` (not described here) is "
                                "the Model Context Protocol's endpoint for agents, its messages JSON-RPC as "
                                "that protocol defines them, behind the same keys and rate limits "
                                "(docs/mcp.md)."},
        "paths": {"/execute": _execute_path(access), "/jobs/{job_id}": _job_path(access),
                  **_simple_paths(access), **_session_paths(access)},
        "components": _components(access),
    }
