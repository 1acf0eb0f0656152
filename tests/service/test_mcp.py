"""/mcp (api/mcp_endpoint.py) with the official MCP SDK's client (Streamable HTTP) against real
gunicorn and nsjail, API keys on: the tool and its schema, a pandas run, a traceback and a bad
argument as tool errors, files out as image and embedded content, no key or an unknown one
refused, the rate limit, and the session tools (state from call to call, their failures as tool
errors, a session belonging to its client over HTTP and MCP alike). The PNG of a real plot:
tests/image/test_mcp.py."""
import asyncio
import base64
import concurrent.futures
import hashlib
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import httpx2
import pytest
import requests
from mcp import ClientSession, MCPError, types
from mcp.client.streamable_http import streamable_http_client

from api import create_app
from api.schemas import ExecuteRequest, SessionRequest
from tests.support.servers import gunicorn

KEYS = {"alice": "alice-" + "m" * 40, "bob": "bob-" + "m" * 40, "carol": "carol-" + "m" * 40}
"""alice and bob as they are; carol with a rate limit of her own, 4 requests a minute."""
T = TypeVar("T")
PANDAS = """
import pandas as pd
def main(input):
    frame = pd.DataFrame(input)
    print(frame.shape)
    return {"total": int(frame["n"].sum()), "mean": float(frame["n"].mean())}
"""
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FILES_OUT = f"""
import os
def main():
    os.makedirs("out", exist_ok=True)
    with open("out/tiny.png", "wb") as f:
        f.write({PNG_MAGIC!r} + bytes(16))
    with open("out/table.csv", "w") as f:
        f.write("a,b\\n1,2\\n")
    return "written"
"""


def sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def service() -> Iterator[str]:
    """The service with keys on (carol limited to 4 requests a minute), one warm jail, and room
    for 3 sessions, 2 a client."""
    keys = f"alice:{sha256(KEYS['alice'])},bob:{sha256(KEYS['bob'])},carol:{sha256(KEYS['carol'])}:4/minute"
    with gunicorn({"PYSANDBOX_API_KEYS": keys, "PYSANDBOX_WARM_JAILS": "1", "PYSANDBOX_MAX_SESSIONS": "3",
                   "PYSANDBOX_MAX_SESSIONS_PER_CLIENT": "2"}) as url:
        yield url


@asynccontextmanager
async def connected(url: str, key: str | None,
                    statuses: list[httpx2.Response]) -> AsyncIterator[ClientSession]:
    """An initialized MCP session on url/mcp, with this key as Bearer; every HTTP answer is kept in
    `statuses` (the SDK's client reports an HTTP refusal only as an MCPError)."""
    async def keep(response: httpx2.Response) -> None:
        statuses.append(response)

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx2.AsyncClient(headers=headers, timeout=60, event_hooks={"response": [keep]}) as http, \
            streamable_http_client(f"{url}/mcp", http_client=http) as (read, write, *_), \
            ClientSession(read, write) as session:
        await session.initialize()
        yield session


def in_session(url: str, key: str | None, use: Callable[[ClientSession], Awaitable[T]],
               statuses: list[httpx2.Response] | None = None) -> T:
    """What `use` makes of a session (run to its end on a new event loop)."""
    async def scenario() -> T:
        async with connected(url, key, statuses if statuses is not None else []) as session:
            return await asyncio.wait_for(use(session), 60)

    return asyncio.run(scenario())


def run_python(url: str, arguments: dict[str, Any]) -> types.CallToolResult:
    return call_tool(url, "run_python", arguments)


def call_tool(url: str, name: str, arguments: dict[str, Any],
              key: str = KEYS["alice"]) -> types.CallToolResult:
    """The tool's result, over a new MCP session with this key."""
    return in_session(url, key, lambda session: session.call_tool(name, arguments))


def answer(result: types.CallToolResult) -> dict[str, Any]:
    """The tool's JSON answer, which is both its first text and its structured content."""
    first = result.content[0]
    assert isinstance(first, types.TextContent)
    assert json.loads(first.text) == result.structured_content
    assert result.structured_content is not None
    return result.structured_content


def test_it_lists_run_python_with_the_schema_of_execute_and_the_session_tools(service: str) -> None:
    listed = in_session(service, KEYS["alice"], lambda session: session.list_tools())
    tools = {tool.name: tool for tool in listed.tools}
    assert list(tools) == ["run_python", "create_session", "run_in_session", "end_session"]
    tool = tools["run_python"]
    assert "main()" in (tool.description or "")
    schema = ExecuteRequest.model_json_schema()
    del schema["properties"]["callback_url"]  # for queued runs only
    assert tool.input_schema == schema and tool.input_schema["required"] == ["script"]
    assert tools["create_session"].input_schema == SessionRequest.model_json_schema()
    call = tools["run_in_session"].input_schema
    assert call["properties"] == {**schema["properties"], "session_id": call["properties"]["session_id"]}
    assert call["required"] == ["script", "session_id"] and call["additionalProperties"] is False
    assert tools["end_session"].input_schema["required"] == ["session_id"]


def test_a_pandas_script_answers_its_result_and_output(service: str) -> None:
    result = run_python(service, {"script": PANDAS, "input": {"n": [1, 2, 3, 4]}})
    body = answer(result)
    assert result.is_error is False, body
    assert body["result"] == {"total": 10, "mean": 2.5}
    assert body["stdout"] == "(4, 1)\n" and body["stderr"] == ""
    assert body["duration_ms"] >= 0 and body["enforcement"] and body["files"] == []


def test_a_traceback_is_a_tool_error_with_our_code(service: str) -> None:
    result = run_python(service, {"script": "print('before')\ndef main():\n    return 1 / 0"})
    body = answer(result)
    assert result.is_error is True
    assert body["error"]["code"] == "main_error"
    assert "ZeroDivisionError" in body["error"]["message"]
    assert 'File "<script>", line 3, in main' in body["error"]["traceback"]
    assert body["stdout"] == "before\n"


@pytest.mark.parametrize(("arguments", "code"), [
    ({"script": "def main():\n    return 1", "unknown": 1}, "invalid_request"),
    ({"script": " "}, "invalid_request"),
    ({"script": "def main():\n    return 1", "files": {"../x": "y"}}, "invalid_file"),
    ({"script": "def main(:"}, "syntax_error"),
    ({"script": "def main():\n    return 1", "callback_url": "http://127.0.0.1/"}, "callback_not_allowed"),
    ({"script": "import time\ndef main():\n    time.sleep(5)", "timeout": 0.5}, "timeout"),
])
def test_bad_arguments_and_faults_are_tool_errors(service: str, arguments: dict[str, Any], code: str) -> None:
    result = run_python(service, arguments)
    assert result.is_error is True and answer(result)["error"]["code"] == code


def test_files_in_and_out(service: str) -> None:
    """A file given comes in; files under out/ come back: the PNG as image content, the CSV as
    an embedded blob, and both named (without their bytes) in the JSON."""
    read = run_python(service, {"script": "def main():\n    return open('data.txt').read()",
                                "files": {"data.txt": "hello"}})
    assert answer(read)["result"] == "hello"
    result = run_python(service, {"script": FILES_OUT})
    body = answer(result)
    assert result.is_error is False and body["result"] == "written"
    assert [(f["name"], f["media_type"]) for f in body["files"]] == [("table.csv", "text/csv"),
                                                                   ("tiny.png", "image/png")]
    assert all("content" not in f for f in body["files"])
    [csv, png] = result.content[1:]
    assert isinstance(csv, types.EmbeddedResource) and isinstance(csv.resource, types.BlobResourceContents)
    assert base64.b64decode(csv.resource.blob) == b"a,b\n1,2\n"
    assert str(csv.resource.uri) == "pysandbox:///out/table.csv"
    assert isinstance(png, types.ImageContent) and png.mime_type == "image/png"
    assert base64.b64decode(png.data) == PNG_MAGIC + bytes(16)


@pytest.mark.parametrize("key", [None, "unknown-" + "m" * 40])
def test_without_a_known_key_it_is_refused(service: str, key: str | None) -> None:
    statuses: list[httpx2.Response] = []
    with pytest.raises(ExceptionGroup) as refused:
        in_session(service, key, lambda session: session.list_tools(), statuses)
    assert refused.group_contains(MCPError)
    [response] = statuses
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="pysandbox"')


def test_the_rate_limit_applies(service: str) -> None:
    """carol's 4 requests a minute: initialize, its notification and two calls, then 429."""
    statuses: list[httpx2.Response] = []

    async def list_until_refused(session: ClientSession) -> None:
        for _ in range(3):
            await session.list_tools()

    with pytest.raises(ExceptionGroup) as refused:
        in_session(service, KEYS["carol"], list_until_refused, statuses)
    assert refused.group_contains(MCPError)
    assert [r.status_code for r in statuses] == [200, 202, 200, 200, 429]
    limited = statuses[-1]
    assert int(limited.headers["Retry-After"]) >= 1 and limited.headers["X-RateLimit-Limit"] == "4"


def test_the_run_slots_are_those_of_execute() -> None:
    """One run slot: while a POST /execute holds it, run_python waits for it like any request of
    that client, and past PYSANDBOX_QUEUE_WAIT_S is a `busy` tool error."""
    env = {"PYSANDBOX_MAX_CONCURRENT_RUNS": "1", "PYSANDBOX_QUEUE_WAIT_S": "0.3", "PYSANDBOX_WARM_JAILS": "0"}
    with gunicorn(env) as url:
        slow = threading.Thread(target=requests.post, args=(f"{url}/execute",), kwargs={
            "json": {"script": "import time\ndef main():\n    time.sleep(4)", "timeout": 10}, "timeout": 30})
        slow.start()
        deadline = time.monotonic() + 10
        while "pysandbox_run_slots_in_use 1.0" not in requests.get(f"{url}/metrics", timeout=5).text:
            assert time.monotonic() < deadline, "the slow run never took the slot"
            time.sleep(0.05)
        result = in_session(url, None, lambda session: session.call_tool(
            "run_python", {"script": "def main():\n    return 1"}))
        slow.join()
    assert result.is_error is True and answer(result)["error"]["code"] == "busy"


def create_session(url: str, key: str = KEYS["alice"], **arguments: Any) -> str:
    """A new session's id, made over MCP."""
    made = call_tool(url, "create_session", arguments, key)
    assert made.is_error is False, answer(made)
    return str(answer(made)["id"])


def test_a_dataframe_made_in_one_call_is_used_in_the_next_then_the_session_ends(service: str) -> None:
    """Each tool call on an MCP session of its own (the server is stateless): the session lives in
    the service, found by its id."""
    session_id = create_session(service, memory_mb=192)
    built = call_tool(service, "run_in_session", {
        "session_id": session_id, "script": "import pandas as pd\nframe = pd.DataFrame({'n': [1, 2, 3]})\n"
                                            "print('built')\nlen(frame)"})
    assert built.is_error is False and answer(built)["result"] == 3 and answer(built)["stdout"] == "built\n"
    used = call_tool(service, "run_in_session", {
        "session_id": session_id, "script": "def main(input):\n    return int(frame.n.sum()) + input",
        "input": 10})
    body = answer(used)
    assert used.is_error is False and body["result"] == 16 and body["files"] == []
    assert body["session"]["id"] == session_id and body["session"]["usage"]["calls"] == 2
    assert body["session"]["memory_mb"] == 192 and body["session"]["state"] == "open"
    failed = call_tool(service, "run_in_session", {"session_id": session_id, "script": "frame.missing"})
    assert failed.is_error is True and answer(failed)["error"]["code"] == "main_error"
    assert answer(failed)["session"]["state"] == "open"
    ended = call_tool(service, "end_session", {"session_id": session_id})
    assert ended.is_error is False
    assert answer(ended)["state"] == "ended" and answer(ended)["reason"] == "deleted"
    for name, arguments in [("run_in_session", {"session_id": session_id, "script": "len(frame)"}),
                            ("end_session", {"session_id": session_id})]:
        after = call_tool(service, name, arguments)
        error = answer(after)["error"]
        assert after.is_error is True and error["code"] == "session_ended" and error["reason"] == "deleted"
        assert answer(after)["session"]["state"] == "ended"


def test_a_session_is_its_clients_over_http_and_mcp_alike(service: str) -> None:
    """alice's session made over HTTP is hers over MCP; bob cannot call or end it, as over HTTP."""
    alice = {"Authorization": f"Bearer {KEYS['alice']}"}
    made = requests.post(f"{service}/sessions", json={}, headers=alice, timeout=30)
    assert made.status_code == 201, made.text
    session_id = made.json()["id"]
    try:
        assert requests.post(f"{service}/sessions/{session_id}/execute", json={"script": "secret = 'alice'"},
                             headers=alice, timeout=30).status_code == 200
        mine = call_tool(service, "run_in_session", {"session_id": session_id, "script": "secret"})
        assert mine.is_error is False and answer(mine)["result"] == "alice"
        for name, arguments in [("run_in_session", {"session_id": session_id, "script": "secret"}),
                                ("end_session", {"session_id": session_id})]:
            theirs = call_tool(service, name, arguments, KEYS["bob"])
            assert theirs.is_error is True and answer(theirs)["error"]["code"] == "session_not_found"
            assert "session" not in answer(theirs)
        still = requests.get(f"{service}/sessions/{session_id}", headers=alice, timeout=10)
        assert still.json()["state"] == "open" and still.json()["usage"]["calls"] == 2
    finally:
        requests.delete(f"{service}/sessions/{session_id}", headers=alice, timeout=10)


@pytest.mark.parametrize(("name", "arguments", "code"), [
    ("run_in_session", {"script": "1"}, "invalid_request"),
    ("run_in_session", {"session_id": "no-such-session", "script": "1"}, "session_not_found"),
    ("run_in_session", {"session_id": "x", "script": "1", "callback_url": "http://127.0.0.1/"},
     "callback_not_allowed"),
    ("end_session", {"session_id": 7}, "invalid_request"),
    ("create_session", {"memory_mb": "a lot"}, "invalid_request"),
    ("create_session", {"unknown": 1}, "invalid_request"),
    ("no_such_tool", {}, "invalid_request"),
])
def test_bad_session_arguments_are_tool_errors(service: str, name: str, arguments: dict[str, Any],
                                               code: str) -> None:
    result = call_tool(service, name, arguments)
    assert result.is_error is True and answer(result)["error"]["code"] == code


def test_a_call_while_one_runs_is_session_busy(service: str) -> None:
    session_id = create_session(service)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            slow = pool.submit(call_tool, service, "run_in_session",
                               {"session_id": session_id, "script": "import time\ntime.sleep(2)\n'slow'"})
            time.sleep(0.7)
            busy = call_tool(service, "run_in_session", {"session_id": session_id, "script": "1"})
            assert busy.is_error is True and answer(busy)["error"]["code"] == "session_busy"
            assert answer(slow.result())["result"] == "slow"
    finally:
        call_tool(service, "end_session", {"session_id": session_id})


def test_too_many_sessions_then_sessions_full(service: str) -> None:
    """2 sessions a client, 3 in all."""
    made: list[tuple[str, str]] = []
    try:
        for _ in range(2):
            made.append((create_session(service, memory_mb=64), KEYS["alice"]))
        over = call_tool(service, "create_session", {"memory_mb": 64})
        assert over.is_error is True and answer(over)["error"]["code"] == "too_many_sessions"
        made.append((create_session(service, KEYS["bob"], memory_mb=64), KEYS["bob"]))
        full = call_tool(service, "create_session", {"memory_mb": 64}, KEYS["bob"])
        assert full.is_error is True and answer(full)["error"]["code"] == "sessions_full"
    finally:
        for session_id, key in made:
            call_tool(service, "end_session", {"session_id": session_id}, key)


def test_an_api_that_only_enqueues_without_redis_answers_queue_unavailable() -> None:
    """Through the app's /mcp view and the SDK's server (stateless: one tools/call, no initialize):
    in queue mode sessions live in the workers, reached through Redis, which is away here."""
    app = create_app({"REDIS_URL": "redis://127.0.0.1:1/0", "EXECUTE_VIA_QUEUE": True})
    for name, arguments in [("create_session", {}), ("run_in_session", {"session_id": "x", "script": "1"}),
                            ("end_session", {"session_id": "x"})]:
        reply = app.test_client().post("/mcp", headers={"Accept": "application/json, text/event-stream"},
                                       json={"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                             "params": {"name": name, "arguments": arguments}})
        assert reply.status_code == 200, reply.text
        result = (reply.json or {})["result"]
        assert result["isError"] is True
        assert result["structuredContent"]["error"]["code"] == "queue_unavailable"
