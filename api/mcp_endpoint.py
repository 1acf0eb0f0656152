"""/mcp: the Model Context Protocol for agents (Streamable HTTP), on the official `mcp` SDK.

One tool, `run_python`: its arguments are POST /execute's body (the JSON Schema of
api/schemas.py's ExecuteRequest, as in the OpenAPI document), its answer what /execute answers,
as MCP content: the answer's JSON as text (and as structured content) without the files' bytes,
then each file under out/: images as ImageContent, the others as embedded blobs. A script's
failure, a refusal (busy, memory_unavailable, payload_too_large, ...) and a bad argument are a
tool error (`isError`) whose JSON carries our code, never a transport failure.

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
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from a2wsgi import ASGIMiddleware
from mcp import types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings

from api.errors import INTERNAL_ERROR, ApiError, invalid
from api.job_queue import QueueError
from api.responses import outcome_body, queue_error
from api.run_request import from_body
from api.schemas import ExecuteRequest, parse_json
from shared.metrics import ERRORS

if TYPE_CHECKING:
    from api.service import Service

log = logging.getLogger(__name__)


def tool_schema() -> dict[str, Any]:
    """ExecuteRequest's JSON Schema without `callback_url`, which only queued runs take."""
    schema = ExecuteRequest.model_json_schema()
    del schema["properties"]["callback_url"]
    return schema


CALLER = "pysandbox.mcp.caller"
"""The WSGI environ entry where the view leaves who asks (a Caller) for the tool."""
RUN_PYTHON = types.Tool(
    name="run_python",
    title="Run Python",
    description=(
        "Run a Python script in a sandbox (no network, a read-only filesystem but /tmp, limits on "
        "time and memory) and answer what its `main()` returned. The script defines a top-level "
        "`main()`, or `main(input)` when `input` is given. numpy and pandas are installed. Files "
        "given in `files` are in the working directory /tmp; files the script writes under `out/` "
        "come back (images as image content). The answer's text is JSON: `result`, `stdout`, "
        "`stderr`, usage (`duration_ms`, `cpu_ms`, `peak_memory_mb`) and `files`; on failure "
        "`error` with `code` (e.g. `main_error` with the `traceback`, `timeout`, `memory_limit`, "
        "`busy`) and `message`."),
    input_schema=tool_schema(),
    annotations=types.ToolAnnotations(read_only_hint=False, destructive_hint=False,
                                      idempotent_hint=False, open_world_hint=False),
)


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
        return types.ListToolsResult(tools=[RUN_PYTHON])

    async def _call_tool(self, ctx: ServerRequestContext[Any],
                         params: types.CallToolRequestParams) -> types.CallToolResult:
        if params.name != RUN_PYTHON.name:
            return tool_error(invalid(f"unknown tool {params.name!r}: this server has {RUN_PYTHON.name!r}"))
        assert ctx.request is not None, "a request over HTTP"
        caller = ctx.request.scope["wsgi_environ"][CALLER]
        return await anyio.to_thread.run_sync(self.run_python, params.arguments or {}, caller)

    def run_python(self, arguments: dict[str, Any], caller: Caller) -> types.CallToolResult:
        """Run the tool's arguments as POST /execute runs its body (blocking)."""
        settings = self.service.settings
        try:
            body = parse_json(ExecuteRequest, json.dumps(arguments).encode())
            asked = from_body(body, settings, queued=False)
            outcome, _ = self.service.mode.execute(asked.script, asked.limits, asked.inputs,
                                                   caller.client, caller.request_id)
            return tool_result(outcome_body(outcome), is_error=False)
        except ApiError as exc:
            return tool_error(exc)
        except QueueError as exc:
            return tool_error(queue_error(exc, settings.retry_after_s))
        except Exception:
            log.exception("run_python failed")
            return tool_error(INTERNAL_ERROR("the service failed; the error was logged"))


def tool_result(body: dict[str, Any], is_error: bool) -> types.CallToolResult:
    """/execute's answer as MCP content: its JSON without the files' bytes (as text and as
    structured content), then each file, images as ImageContent."""
    files = body.get("files") or []
    summary = {**body, "files": [{k: v for k, v in f.items() if k != "content"} for f in files]}
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
