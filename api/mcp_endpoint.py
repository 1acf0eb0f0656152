"""/mcp: the Model Context Protocol for agents (Streamable HTTP), on the official `mcp` SDK.

The tool `run_python`: its arguments are POST /execute's body (the JSON Schema of
api/schemas.py's ExecuteRequest, as in the OpenAPI document), its answer what /execute answers,
as MCP content: the answer's JSON as text (and as structured content) without the files' bytes,
then each file under out/: images as ImageContent, the others as embedded blobs. A script's
failure, a refusal (busy, memory_unavailable, payload_too_large, ...) and a bad argument are a
tool error (`isError`) whose JSON carries our code, never a transport failure.
The session tools are the HTTP session routes (api/sessions.py) through the same functions:
`create_session` (POST /sessions' body), `run_in_session` (a call's body and its `session_id`,
answered as run_python with the session's state) and `end_session` (DELETE). A session belongs
to the client of the key, over HTTP and MCP alike.

How it is served. /mcp is a view of the Flask app (api/routes.py) that hands its request to the
SDK's ASGI app through a2wsgi; not a second server, and not werkzeug's DispatcherMiddleware in
front of Flask. As a view, an MCP request goes through the very hooks /execute does: the API
key (api/clients.py: Bearer, or X-API-Key), the rate limits (api/ratelimits.py: every MCP
request counts, as one HTTP request), the request id and the access log; the run itself goes
through the same run mode (api/modes.py), so the same run slots and fair sharing
(api/capacity.py), or the queue's workers. Nothing of those is copied here.
The SDK runs stateless with JSON answers (`stateless=True, json_response=True`): each MCP
message is one POST answered whole. So nothing holds a stream open in a gunicorn thread, any
process or replica can answer any request, and nginx's buffering in front (docker/nginx.conf)
changes nothing. a2wsgi runs the SDK's app on one event-loop thread of this process (started at
the first request, with the SDK's session manager that a lifespan event would otherwise start:
a2wsgi sends none); a run blocks one of anyio's worker threads, never that loop.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import anyio.to_thread
from a2wsgi import ASGIMiddleware
from mcp import types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import BaseModel, ConfigDict, Field

from api import sessions
from api.errors import INTERNAL_ERROR, ApiError, invalid
from api.job_queue import QueueError
from api.responses import outcome_body, queue_error
from api.run_request import from_body
from api.schemas import ExecuteRequest, SessionRequest, parse_json
from shared.metrics import ERRORS

if TYPE_CHECKING:
    from api.service import Service

log = logging.getLogger(__name__)


M = TypeVar("M", bound=BaseModel)
SESSION_ID = "The session's `id`, as create_session (or POST /sessions) answered it."


class SessionCall(ExecuteRequest):
    """run_in_session's arguments: a session call's body (POST /sessions/{session_id}/execute's)
    and the session's id."""

    model_config = ConfigDict(title="SessionCall")

    session_id: str = Field(description=SESSION_ID)


class SessionRef(BaseModel):
    """end_session's arguments."""

    model_config = ConfigDict(extra="forbid", strict=True, title="SessionRef")

    session_id: str = Field(description=SESSION_ID)


def tool_schema(model: type[BaseModel] = ExecuteRequest) -> dict[str, Any]:
    """The model's JSON Schema without `callback_url`, which only queued runs take."""
    schema = model.model_json_schema()
    schema["properties"].pop("callback_url", None)
    return schema


def parse_arguments(model: type[M], arguments: dict[str, Any]) -> M:
    """A tool's arguments validated as the HTTP body they stand for (400 invalid_request)."""
    return parse_json(model, json.dumps(arguments).encode())


CALLER = "pysandbox.mcp.caller"
"""The WSGI environ entry where the view leaves who asks (a Caller) for the tool."""


def _tool(name: str, title: str, description: str, model: type[BaseModel] = ExecuteRequest,
          destructive: bool = False) -> types.Tool:
    """A tool whose arguments are `model`'s: none is read-only, idempotent or reaches outside
    the sandbox."""
    return types.Tool(
        name=name, title=title, description=description, input_schema=tool_schema(model),
        annotations=types.ToolAnnotations(read_only_hint=False, destructive_hint=destructive,
                                          idempotent_hint=False, open_world_hint=False))


RUN_PYTHON = _tool(
    "run_python", "Run Python",
    "Run a Python script in a sandbox (no network, a read-only filesystem but /tmp, limits on "
    "time and memory) and answer what its `main()` returned. The script defines a top-level "
    "`main()`, or `main(input)` when `input` is given. numpy and pandas are installed. Files "
    "given in `files` are in the working directory /tmp; files the script writes under `out/` "
    "come back (images as image content). The answer's text is JSON: `result`, `stdout`, "
    "`stderr`, usage (`duration_ms`, `cpu_ms`, `peak_memory_mb`) and `files`; on failure "
    "`error` with `code` (e.g. `main_error` with the `traceback`, `timeout`, `memory_limit`, "
    "`busy`) and `message`.")
CREATE_SESSION = _tool(
    "create_session", "Create a Python session",
    "Start a session: one Python interpreter in a sandbox of its own whose state (variables, "
    "imports, files in /tmp) lasts from call to call, like a notebook's kernel. Answers its "
    "state as JSON: `id` (give it to run_in_session and end_session), `memory_mb` (for the "
    "whole session), `idle_timeout_s`, `max_lifetime_s`, `expires_at`. Errors: "
    "`too_many_sessions`, `sessions_full`, `busy`, `sessions_unavailable`.",
    SessionRequest)
RUN_IN_SESSION = _tool(
    "run_in_session", "Run Python in a session",
    "Run a script in a session made by create_session, with what earlier calls defined. The "
    "result is `main()`'s value when the script defines `main`, else the value of its last "
    "expression (like a notebook cell). Arguments as run_python's plus `session_id` "
    "(`memory_mb` is the session's). Answers as run_python, with `session` (its state and usage). "
    "Errors as run_python's, and `session_ended` (with `reason`), `session_not_found`, "
    "`session_busy` (a call is running).",
    SessionCall)
END_SESSION = _tool(
    "end_session", "End a Python session",
    "End a session now (its interpreter is killed). Answers its state, ended. Errors: "
    "`session_ended`, `session_not_found`.",
    SessionRef, destructive=True)
TOOLS = (RUN_PYTHON, CREATE_SESSION, RUN_IN_SESSION, END_SESSION)


@dataclass(frozen=True)
class Caller:
    """Who asks, as the view saw it: the client its runs count against, and its request id."""

    client: str
    request_id: str


class McpEndpoint:
    """The SDK's server and its ASGI app as a WSGI app, for one Service."""

    def __init__(self, service: Service, max_body_bytes: int) -> None:
        self.service = service
        server: Server[Any] = Server("pysandbox", on_list_tools=self._list_tools,
                                     on_call_tool=self._call_tool)
        # The service answers whatever host name it is reached by (like /execute); the SDK's
        # check of Host/Origin against localhost names is for servers on a desktop.
        self.manager = StreamableHTTPSessionManager(
            server, json_response=True, stateless=True, max_request_body_size=max_body_bytes,
            security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False))
        self._wsgi: ASGIMiddleware | None = None
        self._serving: Future[None] | None = None
        """The session manager's task (kept: the loop holds its tasks only weakly)."""
        self._lock = threading.Lock()

    def wsgi(self) -> Callable[..., Any]:
        """The WSGI app that answers an MCP request (the event loop started at the first call)."""
        with self._lock:
            if self._wsgi is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="mcp", daemon=True).start()
                ready = threading.Event()
                self._serving = asyncio.run_coroutine_threadsafe(self._serve(ready), loop)
                if not ready.wait(timeout=10):
                    raise RuntimeError("the MCP session manager did not start")
                self._wsgi = ASGIMiddleware(StreamableHTTPASGIApp(self.manager), loop=loop)  # type: ignore[arg-type]
            return self._wsgi

    async def _serve(self, ready: threading.Event) -> None:
        """The SDK's session manager, running for the process's life (the loop's thread is a daemon)."""
        async with self.manager.run():
            ready.set()
            await asyncio.Event().wait()

    async def _list_tools(self, ctx: ServerRequestContext[Any],
                          params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=list(TOOLS))

    async def _call_tool(self, ctx: ServerRequestContext[Any],
                         params: types.CallToolRequestParams) -> types.CallToolResult:
        tools: dict[str, Callable[[dict[str, Any], Caller], dict[str, Any]]] = {
            RUN_PYTHON.name: self.run_python, CREATE_SESSION.name: self.create_session,
            RUN_IN_SESSION.name: self.run_in_session, END_SESSION.name: self.end_session}
        tool = tools.get(params.name)
        if tool is None:
            return tool_error(invalid(f"unknown tool {params.name!r}: this server has {sorted(tools)}"))
        assert ctx.request is not None, "a request over HTTP"
        caller = ctx.request.scope["wsgi_environ"][CALLER]
        return await anyio.to_thread.run_sync(self.answer, params.name, tool, params.arguments or {}, caller)

    def answer(self, name: str, tool: Callable[[dict[str, Any], Caller], dict[str, Any]],
               arguments: dict[str, Any], caller: Caller) -> types.CallToolResult:
        """The tool's answer as MCP content, or its failure as a tool error with our code (blocking)."""
        try:
            return tool_result(tool(arguments, caller), is_error=False)
        except ApiError as exc:
            return tool_error(exc)
        except QueueError as exc:
            return tool_error(queue_error(exc, self.service.settings.retry_after_s))
        except Exception:
            log.exception("%s failed", name)
            return tool_error(INTERNAL_ERROR("the service failed; the error was logged"))

    def run_python(self, arguments: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """Run the tool's arguments as POST /execute runs its body."""
        asked = from_body(parse_arguments(ExecuteRequest, arguments), self.service.settings, queued=False)
        outcome, _ = self.service.mode.execute(asked.script, asked.limits, asked.inputs,
                                               caller.client, caller.request_id)
        return outcome_body(outcome)

    def create_session(self, arguments: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """A new session of the caller's client, as POST /sessions makes it."""
        body = parse_arguments(SessionRequest, arguments)
        return sessions.start_session(self.service, caller.client, body).body()

    def run_in_session(self, arguments: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """A call in the caller's session, as POST /sessions/<id>/execute runs it."""
        body = parse_arguments(SessionCall, arguments)
        asked = from_body(body, self.service.settings, queued=False)
        return sessions.call_session(self.service, body.session_id, caller.client, asked)

    def end_session(self, arguments: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """End the caller's session, as DELETE /sessions/<id> does."""
        session_id = parse_arguments(SessionRef, arguments).session_id
        return sessions.end_session(self.service, session_id, caller.client).body()


def tool_result(body: dict[str, Any], is_error: bool) -> types.CallToolResult:
    """/execute's answer as MCP content: its JSON without the files' bytes (as text and as
    structured content), then each file, images as ImageContent."""
    files = body.get("files") or []
    summary = body if "files" not in body else \
        {**body, "files": [{k: v for k, v in f.items() if k != "content"} for f in files]}
    content: list[types.ContentBlock] = [types.TextContent(type="text", text=json.dumps(summary))]
    for file in files:
        media_type = file["media_type"]
        if media_type.startswith("image/"):
            content.append(types.ImageContent(type="image", data=file["content"], mime_type=media_type))
        else:
            content.append(types.EmbeddedResource(type="resource", resource=types.BlobResourceContents(
                uri=f"pysandbox:///out/{file['name']}", mime_type=media_type, blob=file["content"])))
    return types.CallToolResult(content=content, structured_content=summary, is_error=is_error)


def tool_error(error: ApiError) -> types.CallToolResult:
    """An error as a tool error: {"error": {"code", "message", ...}} and the run's output if it ran."""
    ERRORS.labels(error.code).inc()
    return tool_result(error.to_dict(), is_error=True)
