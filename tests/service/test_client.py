"""The Python client and the `pysandbox` command (client/) against the real service: gunicorn,
redis-server, an RQ worker and nsjail. Its models and error classes are checked against the
service's /openapi.json; the examples of docs/clients.md run from a fresh venv."""
import asyncio
import hashlib
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
import time
import venv
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from pysandbox_client import (
    AsyncClient,
    CanceledError,
    Client,
    ClientError,
    Retries,
    ScriptError,
    ServerError,
    UnavailableError,
)
from pysandbox_client import models as client_models
from pysandbox_client.client import error_from
from pysandbox_client.errors import (
    ERRORS,
    BusyError,
    InvalidFileError,
    InvalidRequestError,
    JobFinishedError,
    JobNotFoundError,
    MainError,
    MainSignatureError,
    MemoryLimitError,
    NoMainError,
    PayloadTooLargeError,
    QueueUnavailableError,
    RateLimitedError,
    ScriptSyntaxError,
    ScriptTimeoutError,
    ServiceUnreachableError,
    SessionBusyError,
    SessionEndedError,
    SessionNotFoundError,
    UnauthorizedError,
    family,
)

from api.openapi import ERROR_CODES
from tests.support.servers import REPO, free_port, gunicorn, redis_server, workers

KEYS = {"alice": "alice-" + "c" * 40, "bob": "bob-" + "c" * 40}
"""alice as is; bob with a rate limit of his own, 1/second."""
PYSANDBOX = str(Path(sys.executable).parent / "pysandbox")
SLEEPER = ("import time\ndef main():\n    print('started', flush=True)\n    time.sleep({s})\n"
           "    return 'slept'")


def sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The service with keys on, a queue and one worker; scripts over 64 KiB refused."""
    keys = f"alice:{sha256(KEYS['alice'])},bob:{sha256(KEYS['bob'])}:1/second"
    env = {"PYSANDBOX_API_KEYS": keys, "PYSANDBOX_WARM_JAILS": "1", "PYSANDBOX_MAX_SCRIPT_BYTES": "65536"}
    with redis_server(tmp_path_factory.mktemp("redis")) as redis_url, workers(redis_url, 1), \
            gunicorn({**env, "REDIS_URL": redis_url}) as url:
        yield url


@pytest.fixture
def client(service: str) -> Iterator[Client]:
    with Client(service, KEYS["alice"]) as sandbox:
        yield sandbox


# The client's models and codes against the service's document.

def shape(schema: dict[str, Any], defs: dict[str, Any]) -> Any:
    """What a JSON Schema says of a value's type: references followed; descriptions, examples,
    defaults and constraints left out."""
    if "$ref" in schema:
        return shape(defs[schema["$ref"].rsplit("/", 1)[1]], defs)
    if "anyOf" in schema:
        return frozenset(shape(member, defs) for member in schema["anyOf"])
    if "const" in schema or "enum" in schema:
        return "enum", frozenset(schema["enum"] if "enum" in schema else [schema["const"]])
    if schema.get("type") == "object":
        extra = schema.get("additionalProperties")
        fields = tuple(sorted((name, shape(field, defs)) for name, field in
                              schema.get("properties", {}).items()))
        return ("object", fields, frozenset(schema.get("required", [])),
                shape(extra, defs) if isinstance(extra, dict) else extra)
    if schema.get("type") == "array":
        return "array", shape(schema["items"], defs)
    return schema.get("type", "any")


CHECKED_MODELS: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = [
    (client_models.ExecuteRequest, "validation"), (client_models.RunResult, "serialization"),
    (client_models.RunError, "serialization"), (client_models.Error, "serialization"),
    (client_models.JobQueued, "serialization"), (client_models.JobState, "serialization"),
    (client_models.SessionState, "serialization"), (client_models.SessionRunResult, "serialization")]


def document(url: str) -> dict[str, Any]:
    answer = httpx.get(f"{url}/openapi.json", timeout=10)
    assert answer.status_code == 200
    return dict(answer.json())


def test_the_models_match_the_services_openapi_document(service):
    served = document(service)["components"]["schemas"]
    _, ours = models_json_schema(CHECKED_MODELS, ref_template="#/components/schemas/{model}")
    for model, _mode in CHECKED_MODELS:
        name = model.__name__
        assert shape(ours["$defs"][name], ours["$defs"]) == shape(served[name], served), name


def test_the_shapes_compared_tell_a_change_apart():
    """The comparison is not blind: a field renamed, retyped, made optional or a status added shows."""
    defs: dict[str, Any] = {}
    base = {"type": "object", "properties": {"a": {"type": "integer"}, "s": {"enum": ["x", "y"]}},
            "required": ["a"]}
    assert shape(base, defs) == shape({**base, "description": "other words"}, defs)
    for changed in ({**base, "properties": {"b": {"type": "integer"}, "s": {"enum": ["x", "y"]}}},
                    {**base, "properties": {"a": {"type": "string"}, "s": {"enum": ["x", "y"]}}},
                    {**base, "required": []},
                    {**base, "properties": {"a": {"type": "integer"}, "s": {"enum": ["x", "y", "z"]}}}):
        assert shape(changed, defs) != shape(base, defs)


def error_codes(node: Any) -> set[str]:
    """Every error code a document names: the enums of `error.code` and the examples' codes."""
    found: set[str] = set()
    if isinstance(node, dict):
        code = node.get("code")
        if isinstance(code, str) and "message" in node:
            found.add(code)
        elif isinstance(code, dict) and "enum" in code:
            found.update(code["enum"])
        for value in node.values():
            found |= error_codes(value)
    elif isinstance(node, list):
        for value in node:
            found |= error_codes(value)
    return found


def test_every_error_code_of_the_document_has_its_class_in_its_statuss_family(service):
    assert set(ERRORS) - {ServiceUnreachableError.CODE} == error_codes(document(service))
    for status, codes in ERROR_CODES.items():
        for code in codes:
            assert issubclass(ERRORS[code], family(status)) and ERRORS[code] is not family(status), code
    assert ERRORS["canceled"] is CanceledError and issubclass(ERRORS["busy"], ServerError)


def test_the_operations_the_client_calls_are_in_the_document(service):
    paths = document(service)["paths"]
    assert {"post"} <= set(paths["/execute"]) and {"get", "delete"} <= set(paths["/jobs/{job_id}"])
    assert {"post"} <= set(paths["/sessions"]) and {"post"} <= set(paths["/sessions/{session_id}/execute"])
    assert {"get", "delete"} <= set(paths["/sessions/{session_id}"])
    assert [p["name"] for p in paths["/execute"]["post"]["parameters"] if "name" in p] == ["async"]


@pytest.mark.parametrize("status, body, expected", [
    (418, {"error": {"code": "teapot", "message": "short and stout"}}, ClientError),
    (422, {"error": {"code": "new_fault", "message": "m"}}, ScriptError),
    (503, {"error": {"code": "new_reason", "message": "m"}}, UnavailableError),
    (500, {"error": {"code": "new_failure", "message": "m"}}, ServerError),
    (502, None, UnavailableError),
])
def test_an_unknown_code_is_its_statuss_family(status, body, expected):
    request = httpx.Request("GET", "http://sandbox.invalid/jobs/1", headers={"X-Request-ID": "sent-1"})
    answer = httpx.Response(status, json=body, request=request) if body else \
        httpx.Response(status, text="<html>bad gateway</html>", request=request)
    error = error_from(answer)
    assert type(error) is expected and error.status == status and error.request_id == "sent-1"
    assert error.code == (body["error"]["code"] if body else "http_error")


def test_the_client_is_typed_and_clean():
    """mypy --strict (client/pyproject.toml) and ruff (the repository's rules) on the package."""
    tools = Path(sys.executable).parent
    for args in ([str(tools / "mypy"), "--config-file", "pyproject.toml"],
                 [str(tools / "ruff"), "check", "--config", str(REPO / "pyproject.toml"), "."]):
        run = subprocess.run(args, cwd=REPO / "client", capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout + run.stderr
    assert (REPO / "client" / "pysandbox_client" / "py.typed").exists()


# Runs.

def test_run_takes_input_stdin_files_and_limits_and_answers_files_as_bytes(client):
    script = ("import sys\n"
              "def main(input):\n"
              "    data = open('raw.bin', 'rb').read()\n"
              "    open('out/reversed.bin', 'wb').write(data[::-1])\n"
              "    print('line:', sys.stdin.readline().strip())\n"
              "    print('warned', file=sys.stderr)\n"
              "    return {'input': input, 'text': open('notes/a.txt').read(), 'size': len(data)}")
    result = client.run(script, input={"n": [1, None]}, stdin="hello\nrest", timeout=10, memory_mb=128,
                        files={"raw.bin": bytes(range(256)), "notes/a.txt": "é\n"})
    assert result.result == {"input": {"n": [1, None]}, "text": "é\n", "size": 256}
    assert (result.stdout, result.stderr) == ("line: hello\n", "warned\n")
    assert [(f.name, f.data) for f in result.files] == [("reversed.bin", bytes(range(255, -1, -1)))]
    assert result.duration_ms >= 0 and not result.output_truncated


def test_input_none_is_an_input_and_no_input_calls_main_without_one(client):
    assert client.run("def main(x):\n    return x is None", input=None).result is True
    with pytest.raises(MainSignatureError):
        client.run("def main(x):\n    return x")


@pytest.mark.parametrize("script, options, error, printed", [
    ("def main(:\n    pass", {}, ScriptSyntaxError, ""),
    ("x = 1", {}, NoMainError, "before\n"),
    ("import time\ndef main():\n    time.sleep(5)", {"timeout": 1}, ScriptTimeoutError, "before\n"),
    ("def main():\n    b = bytearray(10**9)\n    return len(b)", {"memory_mb": 128}, MemoryLimitError,
     "before\n"),
])
def test_the_scripts_faults_raise_their_class_with_the_runs_output(client, script, options, error, printed):
    with pytest.raises(error) as raised:
        client.run("print('before')\n" + script, **options)
    assert raised.value.status == 422 and isinstance(raised.value, ScriptError)
    assert raised.value.output is not None and raised.value.output.stdout == printed


def test_main_error_carries_the_traceback_and_the_request_id(client):
    with pytest.raises(MainError) as raised:
        client.run("def main():\n    return 1 / 0", request_id="mine-1")
    error = raised.value
    assert error.request_id == "mine-1" and error.code == "main_error" and error.status == 422
    assert error.traceback and error.traceback.splitlines()[-1] == "ZeroDivisionError: division by zero"
    assert str(error) == "main_error: main() raised ZeroDivisionError: division by zero (request id mine-1)"


def test_a_request_id_is_made_for_every_request_and_reported(client):
    ids = set()
    for _ in range(2):
        with pytest.raises(MainError) as raised:
            client.run("def main():\n    raise ValueError")
        ids.add(raised.value.request_id)
    assert len(ids) == 2 and all(i and re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


@pytest.mark.parametrize("call, error", [
    (lambda c: c.run("def main(): pass", files={"../escape": "x"}), InvalidFileError),
    (lambda c: c.run("def main(): pass", timeout=-1), InvalidRequestError),
    (lambda c: c.run("def main(): pass\n" + "#" * 70_000), PayloadTooLargeError),
    (lambda c: c.get("12345678-1234-1234-1234-123456789012"), JobNotFoundError),
])
def test_refused_requests_raise_their_class(client, call, error):
    with pytest.raises(error) as raised:
        call(client)
    assert isinstance(raised.value, ClientError) and raised.value.status in (400, 404, 413)
    assert raised.value.request_id and raised.value.message


@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_without_a_valid_key_it_is_unauthorized(service, key, monkeypatch):
    monkeypatch.delenv("PYSANDBOX_API_KEY", raising=False)
    with Client(service, key) as sandbox, pytest.raises(UnauthorizedError) as raised:
        sandbox.run("def main(): pass")
    assert raised.value.status == 401 and isinstance(raised.value, ClientError)


def test_url_and_key_come_from_the_environment(service, monkeypatch):
    monkeypatch.setenv("PYSANDBOX_URL", service)
    monkeypatch.setenv("PYSANDBOX_API_KEY", KEYS["alice"])
    with Client() as sandbox:
        assert sandbox.run("def main():\n    return 'env'").result == "env"


def test_an_unreachable_service_is_its_own_error():
    with Client(f"http://127.0.0.1:{free_port()}") as sandbox, \
            pytest.raises(ServiceUnreachableError) as raised:
        sandbox.run("def main(): pass", request_id="lost-1")
    assert raised.value.status is None and raised.value.request_id == "lost-1"


# Jobs.

def test_a_job_is_submitted_waited_for_and_got(client):
    script = "def main(rows):\n    open('out/n.txt', 'w').write(str(len(rows)))\n    return sum(rows)"
    job = client.submit(script, input=[1, 2, 3], request_id="job-req-1")
    assert job.status == "queued"
    polls: list[str] = []
    result = client.wait(job.id, timeout=60, on_poll=lambda state: polls.append(state.status))
    assert result.result == 6 and result.files[0].data == b"3" and polls[-1] == "finished"
    state = client.get(job.id)
    assert state.status == "finished" and state.request_id == "job-req-1" and state.result == 6
    with pytest.raises(JobFinishedError) as raised:
        client.cancel(job.id)
    assert raised.value.status == 409


def test_a_failed_job_raises_the_scripts_error_with_its_output(client):
    job = client.submit("print('went')\ndef main():\n    return {1}")
    with pytest.raises(ScriptError) as raised:
        client.wait(job.id, timeout=60)
    output = raised.value.output
    assert raised.value.code == "invalid_result" and output is not None and output.stdout == "went\n"


def test_a_canceled_job_raises_canceled_error_with_what_it_printed(client):
    job = client.submit(SLEEPER.format(s=20), timeout=25)
    deadline = time.monotonic() + 30
    while (state := client.get(job.id)).status != "running":
        assert time.monotonic() < deadline, state
        time.sleep(0.1)
    time.sleep(0.5)  # it printed
    assert client.cancel(job.id).status == "canceled"
    with pytest.raises(CanceledError) as raised:
        client.wait(job.id)
    output = raised.value.output
    assert raised.value.code == "canceled" and output is not None and "started" in output.stdout


def test_waiting_past_a_timeout_leaves_the_job_running(client):
    job = client.submit(SLEEPER.format(s=10), timeout=15)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        client.wait(job.id, timeout=1)
    assert time.monotonic() - started < 5
    assert client.get(job.id).status in ("queued", "running")
    client.cancel(job.id)


# asyncio.

# Sessions.

def test_a_session_keeps_its_state_and_its_end_is_session_ended_with_the_reason(client, service):
    session = client.create_session(memory_mb=128, idle_timeout_s=60)
    assert session.state == "open" and session.memory_mb == 128 and session.idle_timeout_s == 60
    client.session_run(session.id, "import pandas as pd\nframe = pd.DataFrame({'a': [1, 2]})")
    answer = client.session_run(session.id, "int(frame.a.sum())")
    assert answer.result == 3 and answer.session.usage.calls == 2
    assert client.get_session(session.id).usage.calls == 2
    with pytest.raises(MainError):
        client.session_run(session.id, "1 / 0")
    with Client(service, KEYS["bob"]) as bob, pytest.raises(SessionNotFoundError):
        bob.get_session(session.id)
    assert client.delete_session(session.id).reason == "deleted"
    with pytest.raises(SessionEndedError) as ended:
        client.session_run(session.id, "frame")
    assert ended.value.status == 410 and ended.value.reason == "deleted"


def test_a_sessions_queued_calls_run_in_order_and_are_waited_for_as_jobs(client):
    session = client.create_session()
    first = client.session_submit(session.id, "import time\ntime.sleep(0.3)\nseen = [1]")
    second = client.session_submit(session.id, "seen.append(2)\nseen")
    with pytest.raises(SessionBusyError):
        client.session_run(session.id, "seen")
    assert client.wait(second.id, poll_interval=0.1).result == [1, 2]
    state = client.get(first.id)
    assert state.status == "finished" and state.session is not None and state.session.id == session.id
    client.delete_session(session.id)


def test_the_async_client_runs_sessions_too(service):
    async def scenario() -> None:
        async with AsyncClient(service, KEYS["alice"]) as sandbox:
            session = await sandbox.create_session()
            await sandbox.session_run(session.id, "x = 20")
            assert (await sandbox.session_run(session.id, "def main(more):\n    return x + more",
                                              input=22)).result == 42
            assert (await sandbox.get_session(session.id)).state == "open"
            job = await sandbox.session_submit(session.id, "x + 1")
            assert (await sandbox.wait(job.id, poll_interval=0.1)).result == 21
            assert (await sandbox.delete_session(session.id)).state == "ended"

    asyncio.run(scenario())


def test_the_async_client_does_the_same(service):
    async def scenario() -> None:
        async with AsyncClient(service, KEYS["alice"]) as sandbox:
            runs = await asyncio.gather(*(sandbox.run(f"def main():\n    return {n}") for n in range(3)))
            assert [r.result for r in runs] == [0, 1, 2]
            both = await sandbox.run("def main():\n    return open('b').read()", files={"b": b"\x01"})
            assert both.result == "\x01"
            job = await sandbox.submit("def main(x):\n    return x * 2", input=21)
            assert (await sandbox.wait(job.id, timeout=60)).result == 42
            assert (await sandbox.get(job.id)).status == "finished"
            with pytest.raises(MainError):
                await sandbox.run("def main():\n    raise KeyError('k')")
            slow = await sandbox.submit(SLEEPER.format(s=20), timeout=25)
            assert (await sandbox.cancel(slow.id)).status == "canceled"
            with pytest.raises(CanceledError):
                await sandbox.wait(slow.id)

    asyncio.run(scenario())


# Retries, on a service made busy for real: one run slot, no wait for it.

def statuses(log: Path, request_id: str, last: int) -> list[int]:
    """The statuses of the access log's lines of this request id, once the last is `last` (gunicorn
    writes a line after its answer)."""
    deadline = time.monotonic() + 10
    while True:
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        found = [line["httpRequest"]["status"] for line in lines
                 if line.get("request_id") == request_id and "httpRequest" in line]
        if found[-1:] == [last] or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


@pytest.fixture(scope="module")
def busy_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """One run slot, 503 busy at once past it (Retry-After: 1); no queue. Its URL and log."""
    log = tmp_path_factory.mktemp("busy") / "api.log"
    env = {"PYSANDBOX_MAX_CONCURRENT_RUNS": "1", "PYSANDBOX_QUEUE_WAIT_S": "0",
           "PYSANDBOX_RETRY_AFTER_S": "1", "PYSANDBOX_WARM_JAILS": "0"}
    with gunicorn(env, log_path=log) as url:
        yield url, log


def test_busy_is_retried_after_retry_after_a_bounded_number_of_times(busy_service):
    url, log = busy_service
    def hold() -> None:
        with Client(url) as holder_client:
            holder_client.run(SLEEPER.format(s=5), timeout=10)

    holder = threading.Thread(target=hold)
    holder.start()
    time.sleep(1.0)  # it holds the only slot
    try:
        with Client(url, retries=Retries(attempts=0)) as sandbox, pytest.raises(BusyError) as refused:
            sandbox.run("def main(): return 1", request_id="no-retries")
        assert refused.value.retry_after == 1 and refused.value.request_id == "no-retries"
        assert refused.value.status == 503 and isinstance(refused.value, UnavailableError)
        started = time.monotonic()
        with Client(url, retries=Retries(attempts=2)) as sandbox, pytest.raises(BusyError):
            sandbox.run("def main(): return 1", request_id="two-retries")
        assert 2.0 <= time.monotonic() - started < 6  # two waits of Retry-After's 1 s, then no more
        with Client(url, retries=Retries(attempts=20)) as sandbox:
            assert sandbox.run("def main(): return 'in'", request_id="patient").result == "in"
    finally:
        holder.join()
    assert statuses(log, "no-retries", 503) == [503]
    assert statuses(log, "two-retries", 503) == [503] * 3
    patient = statuses(log, "patient", 200)
    assert patient[-1] == 200 and len(patient) >= 2 and set(patient[:-1]) == {503}, patient


def test_no_queue_is_queue_unavailable(busy_service):
    url, _ = busy_service
    with Client(url, retries=Retries(attempts=0)) as sandbox, pytest.raises(QueueUnavailableError) as raised:
        sandbox.submit("def main(): pass")
    assert raised.value.status == 503 and raised.value.retry_after == 5


def test_rate_limited_is_retried_after_retry_after(service):
    """bob may send one request a second."""
    time.sleep(1.1)
    with Client(service, KEYS["bob"], retries=Retries(attempts=0)) as sandbox:
        sandbox.run("def main(): return 1")
        with pytest.raises(RateLimitedError) as raised:
            sandbox.run("def main(): return 2")
    assert raised.value.status == 429 and raised.value.retry_after and raised.value.retry_after >= 1
    time.sleep(1.1)
    started = time.monotonic()
    with Client(service, KEYS["bob"]) as sandbox:
        assert [sandbox.run(f"def main(): return {n}").result for n in range(3)] == [0, 1, 2]
    assert time.monotonic() - started >= 1.5  # the service's pace, not the client's


# The command line, end to end.

def cli(service: str | None, *args: str, cwd: Path, key: str = KEYS["alice"],
        stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSANDBOX_")}
    env |= {"PYSANDBOX_API_KEY": key, **({"PYSANDBOX_URL": service} if service else {})}
    return subprocess.run([PYSANDBOX, *args], cwd=cwd, env=env, input=stdin, capture_output=True,
                          text=True, timeout=120)


ANALYSIS = ("import sys\n"
            "def main(input):\n"
            "    rows = open('data.csv').read().split()\n"
            "    print('rows:', len(rows))\n"
            "    print('note', file=sys.stderr)\n"
            "    open('out/first.txt', 'w').write(rows[0])\n"
            "    return {'title': input['title'], 'line': sys.stdin.read().strip(), 'rows': len(rows)}\n")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "analysis.py").write_text(ANALYSIS)
    (tmp_path / "data.json").write_text('{"title": "T"}')
    (tmp_path / "data.csv").write_text("a\nb\n")
    return tmp_path


def test_cli_run_prints_output_then_the_result_and_saves_files(service, workdir):
    done = cli(service, "run", "analysis.py", "--input", "data.json", "--file", "data.csv", "--stdin", "-",
               "--timeout", "10", "--memory", "128", "--out", "results", cwd=workdir, stdin="piped\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "rows: 2" and done.stderr == "note\n"
    assert json.loads(done.stdout.splitlines()[-1]) == {"title": "T", "line": "piped", "rows": 2}
    assert (workdir / "results" / "first.txt").read_text() == "a"


def test_cli_the_json_starts_a_line_of_its_own(service, tmp_path):
    done = cli(service, "run", "-", cwd=tmp_path, stdin="print('no newline', end='')\ndef main(): return 1")
    assert done.returncode == 0 and done.stdout == "no newline\n1\n"


def test_cli_script_error_exits_1_with_the_code(service, tmp_path):
    (tmp_path / "bad.py").write_text("print('so far')\ndef main():\n    return 1 / 0\n")
    done = cli(service, "run", "bad.py", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout.splitlines()[0] == "so far"
    error = json.loads(done.stdout.splitlines()[-1])["error"]
    assert error["code"] == "main_error" and re.fullmatch(r"[0-9a-f]{32}", error["request_id"])
    assert "pysandbox: main_error: main() raised ZeroDivisionError" in done.stderr
    assert done.stderr.rstrip().endswith("ZeroDivisionError: division by zero")


@pytest.mark.parametrize("service_given, key, status, code", [
    (True, "wrong-key", 3, "unauthorized"),
    (False, KEYS["alice"], 4, "service_unreachable"),
])
def test_cli_refused_and_unreachable_exit_3_and_4(service, tmp_path, service_given, key, status, code):
    (tmp_path / "s.py").write_text("def main(): return 1\n")
    url = service if service_given else f"http://127.0.0.1:{free_port()}"
    done = cli(None, "run", "s.py", "--url", url, cwd=tmp_path, key=key)
    assert done.returncode == status, done.stderr
    assert json.loads(done.stdout)["error"]["code"] == code


def test_cli_usage_errors_exit_2(service, tmp_path):
    assert cli(service, "run", "missing.py", cwd=tmp_path).returncode == 2
    (tmp_path / "s.py").write_text("def main(x): return x\n")
    (tmp_path / "bad.json").write_text("{")
    done = cli(service, "run", "s.py", "--input", "bad.json", cwd=tmp_path)
    assert done.returncode == 2 and "not JSON" in done.stderr


def test_cli_async_no_wait_and_jobs(service, workdir):
    done = cli(service, "run", "analysis.py", "--input", "data.json", "--file", "data.csv", "--async",
               cwd=workdir)
    assert done.returncode == 0 and json.loads(done.stdout.splitlines()[-1])["rows"] == 2, done.stderr
    assert "job " not in done.stderr  # no spinner when stderr is not a terminal
    queued = cli(service, "run", "analysis.py", "--input", "data.json", "--file", "data.csv", "--no-wait",
                 cwd=workdir)
    job_id = queued.stdout.strip()
    assert queued.returncode == 0 and re.fullmatch(r"[0-9a-f-]{36}", job_id), queued
    with Client(service, KEYS["alice"]) as sandbox:
        sandbox.wait(job_id, timeout=60)
    got = cli(service, "jobs", "get", job_id, "--out", "saved", cwd=workdir)
    state = json.loads(got.stdout)
    assert got.returncode == 0 and state["status"] == "finished" and state["result"]["rows"] == 2
    assert state["files"] == [{"name": "first.txt", "size": 1, "media_type": "text/plain",
                               "encoding": "base64"}]
    assert (workdir / "saved" / "first.txt").read_text() == "a"
    late = cli(service, "jobs", "cancel", job_id, cwd=workdir)
    assert late.returncode == 3 and json.loads(late.stdout)["error"]["code"] == "job_finished"
    slow = cli(service, "run", "-", "--no-wait", "--timeout", "20", cwd=workdir, stdin=SLEEPER.format(s=15))
    canceled = cli(service, "jobs", "cancel", slow.stdout.strip(), cwd=workdir)
    assert canceled.returncode == 0 and json.loads(canceled.stdout)["status"] == "canceled"
    missing = cli(service, "jobs", "get", "12345678-1234-1234-1234-123456789012", cwd=workdir)
    assert missing.returncode == 3 and json.loads(missing.stdout)["error"]["code"] == "job_not_found"


class OnATerminal:
    """`pysandbox run SCRIPT --async` with its stderr on a pseudo-terminal, read as it writes."""

    def __init__(self, service: str, cwd: Path, script: str) -> None:
        (cwd / "script.py").write_text(script)
        self.controller, terminal = pty.openpty()
        env = {**os.environ, "PYSANDBOX_URL": service, "PYSANDBOX_API_KEY": KEYS["alice"]}
        # Ctrl-C's default disposition, as a shell gives its foreground command: a test run that
        # was itself started in the background (`cmd &` without job control) ignores SIGINT,
        # which its children would inherit, and then Python raises no KeyboardInterrupt.
        self.proc = subprocess.Popen([PYSANDBOX, "run", "script.py", "--async"], cwd=cwd, env=env,
                                     stdout=subprocess.PIPE, stderr=terminal, text=True,
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        os.close(terminal)
        self.shown = ""

    def read_until(self, pattern: str) -> re.Match[str] | None:
        """Read the terminal until pattern shows (its match), or until it closes (None)."""
        while not (found := re.search(pattern, self.shown)):
            if not select.select([self.controller], [], [], 60)[0]:
                return None
            try:
                chunk = os.read(self.controller, 4096)
            except OSError:  # the command ended: the terminal is closed
                chunk = b""
            if not chunk:
                return None
            self.shown += chunk.decode()
        return found

    def end(self) -> str:
        """The command's stdout, once it ended."""
        self.read_until("(?!)")  # matches nothing: read until it closes
        os.close(self.controller)
        return self.proc.communicate(timeout=60)[0]


SPINNER = r"job ([0-9a-f-]{36}) (queued|running) \d+\.\ds"


def test_cli_async_shows_a_spinner_on_a_terminal(service, tmp_path):
    terminal = OnATerminal(service, tmp_path, SLEEPER.format(s=1.5))
    stdout = terminal.end()
    assert terminal.proc.returncode == 0 and stdout.splitlines()[-1] == '"slept"'
    assert re.search(SPINNER, terminal.shown), terminal.shown
    assert terminal.shown.endswith("\r\x1b[K"), terminal.shown  # the line cleared at the end


def test_cli_ctrl_c_cancels_the_job_it_waits_for(service, client, tmp_path):
    terminal = OnATerminal(service, tmp_path, SLEEPER.format(s=20))
    shown = terminal.read_until(SPINNER.replace("(queued|running)", "running"))
    assert shown, terminal.shown
    terminal.proc.send_signal(signal.SIGINT)
    stdout = terminal.end()
    assert terminal.proc.returncode == 130, (stdout, terminal.shown)
    assert client.get(shown.group(1)).status == "canceled"


# The documentation's examples, from a fresh venv.

def code_blocks(language: str) -> list[str]:
    section = (REPO / "docs" / "clients.md").read_text().split("## Python client and CLI", 1)[1]
    return re.findall(rf"```{language}\n(.*?)```", section, re.S)


def test_the_documented_install_example_and_commands_work(service, tmp_path):
    fresh = tmp_path / "venv"
    venv.create(fresh, with_pip=True)
    bin_dir = fresh / "bin"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSANDBOX_")}
    env |= {"PATH": f"{bin_dir}:{env['PATH']}", "PYSANDBOX_URL": service, "PYSANDBOX_API_KEY": KEYS["alice"]}
    install, commands = code_blocks("sh")
    done = subprocess.run(["bash", "-ec", install.replace("pip ", "pip --disable-pip-version-check -q ")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    for example in code_blocks("python"):
        example = example.replace("http://localhost:8080", service)
        done = subprocess.run([str(bin_dir / "python"), "-c", example], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[0] in ("42", "b'6'"), done.stdout
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run(["bash", "-ec", commands], cwd=work, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[:2] == ["2 rows", '{"total": 4.0}'], done.stdout
    assert (work / "reports" / "report.txt").read_text() == "March: 2 rows\n"
