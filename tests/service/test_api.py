"""POST /execute and GET /health through Flask's test client, with the real jail behind it."""
import base64
import re
import threading
import time

import pytest

from api import create_app
from api.service import EXTENSION
from jail import host_cgroups
from jail.runinput import in_name_problem


@pytest.fixture(scope="module")
def client():
    return create_app({"DEFAULT_TIMEOUT_S": 3.0, "MAX_TIMEOUT_S": 2.0}).test_client()


def execute(client, script: str, **options):
    return client.post("/execute", json={"script": script, **options})


def error_of(response) -> str:
    body = response.get_json()
    assert set(body["error"]) >= {"code", "message"} and body["error"]["message"]
    return body["error"]["code"]


def test_health_reports_the_self_test(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json()["status"] == "ok"
    assert response.get_json()["selftest"]["passed"] is True


def test_health_names_the_enforcement_and_lists_only_real_degradation(client):
    body = client.get("/health").get_json()
    host = host_cgroups()
    assert body["enforcement"] == host.enforcement.value
    assert body["enforcement"] in ("cgroup v2", "cgroup v1", "rlimits + watchdog")
    assert (body["selftest"]["degraded"] == []) == host.complete, body


def test_every_answer_about_a_run_carries_its_usage(client):
    for script, status in (("def main(): return 1", 200), ("def main(): return 1 / 0", 422)):
        response = execute(client, script)
        assert response.status_code == status
        body = response.get_json()
        assert isinstance(body["cpu_ms"], int) and body["cpu_ms"] >= 0, body
        assert isinstance(body["peak_memory_mb"], float) and body["peak_memory_mb"] >= 0, body


def test_result_and_stdout_are_kept_apart(client):
    response = execute(client, 'print("top")\ndef main():\n    print("in main")\n'
                               '    return {"x": [1, 2.5, None, True, "é"]}')
    assert response.status_code == 200
    body = response.get_json()
    assert body["result"] == {"x": [1, 2.5, None, True, "é"]}
    assert body["stdout"] == "top\nin main\n"
    assert body["output_truncated"] is False and body["duration_ms"] >= 0


def test_numpy_and_pandas_work(client):
    script = ("import numpy as np, pandas as pd\n"
              "def main():\n"
              "    df = pd.DataFrame({'k': ['a', 'b', 'a'], 'v': np.arange(3)})\n"
              "    return df.groupby('k')['v'].sum().to_dict()\n")
    response = execute(client, script)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["result"] == {"a": 2, "b": 1}


@pytest.mark.parametrize("script, code", [
    ("def main(:\n  pass", "syntax_error"),
    ("x = 1", "no_main"),
    ("main = 3", "no_main"),
    ("def main():\n    raise ValueError('boom')", "main_error"),
    ("raise RuntimeError('at import')\ndef main(): return 1", "main_error"),
    ("def main():\n    return {1, 2}", "invalid_result"),
    ("def main():\n    return float('nan')", "invalid_result"),
    ("import time\ndef main():\n    time.sleep(10)", "timeout"),
    ("def main():\n    x = bytearray(900 * 2**20)\n    return len(x)", "memory_limit"),
    ("def main():\n    while True: print('x' * 4096)", "output_limit"),
    ("def main():\n    return 'x' * (2 * 2**20)", "result_too_large"),
    ("import sys\ndef main():\n    sys.exit(0)", "no_result"),
    ("import os\ndef main():\n    os._exit(1)", "no_result"),
], ids=lambda v: v if isinstance(v, str) and v.isidentifier() else None)
def test_script_faults_are_422_with_their_code(client, script, code):
    response = execute(client, script, timeout=1, memory_mb=128)
    assert response.status_code == 422
    assert error_of(response) == code
    assert "stdout" in response.get_json()


def test_main_error_traceback_shows_only_the_users_frames(client):
    response = execute(client, "def helper():\n    return 1 / 0\n\ndef main():\n    return helper()\n")
    trace = response.get_json()["error"]["traceback"]
    assert 'File "<script>", line 5, in main' in trace and "line 2, in helper" in trace
    assert "harness" not in trace and "ZeroDivisionError" in trace


def test_invalid_result_names_the_type(client):
    response = execute(client, "class Thing: pass\ndef main():\n    return Thing()")
    assert "Thing" in response.get_json()["error"]["message"]


def test_prints_before_an_error_are_returned(client):
    response = execute(client, "def main():\n    print('clue')\n    raise KeyError('k')")
    assert response.get_json()["stdout"] == "clue\n"


def test_output_limit_truncates_and_marks_it(client):
    response = execute(client, "def main():\n    while True: print('y' * 1000)")
    body = response.get_json()
    assert body["output_truncated"] is True
    assert len(body["stdout"].encode()) + len(body["stderr"].encode()) == 1024 * 1024


@pytest.mark.parametrize("kwargs, status, code", [
    ({"data": "{}", "content_type": "text/plain"}, 415, "unsupported_media_type"),
    ({"data": "{not json", "content_type": "application/json"}, 400, "invalid_request"),
    ({"data": b"\xff\xfe", "content_type": "application/json"}, 400, "invalid_request"),
    ({"json": [1, 2]}, 400, "invalid_request"),
    ({"json": {}}, 400, "invalid_request"),
    ({"json": {"script": 5}}, 400, "invalid_request"),
    ({"json": {"script": "   "}}, 400, "invalid_request"),
    ({"json": {"script": "def main(): pass", "extra": 1}}, 400, "invalid_request"),
    ({"json": {"script": "def main(): pass", "timeout": "5"}}, 400, "invalid_request"),
    ({"json": {"script": "def main(): pass", "timeout": -1}}, 400, "invalid_request"),
    ({"json": {"script": "def main(): pass", "timeout": True}}, 400, "invalid_request"),
    ({"json": {"script": "def main(): pass", "memory_mb": 1.5}}, 400, "invalid_request"),
    ({"json": {"script": "#" * (300 * 1024)}}, 413, "payload_too_large"),
    ({"data": "x" * (20 * 1024 * 1024), "content_type": "application/json"}, 413, "payload_too_large"),
])
def test_bad_requests_are_json_4xx(client, kwargs, status, code):
    response = client.post("/execute", **kwargs)
    assert response.status_code == status
    assert error_of(response) == code


def test_unknown_path_and_wrong_method_are_json(client):
    assert error_of(client.get("/nowhere")) == "not_found"
    response = client.get("/execute")
    assert response.status_code == 405 and error_of(response) == "method_not_allowed"
    assert "POST" in response.headers["Allow"]


def test_limits_are_clamped_to_the_servers_maximum(client):
    response = execute(client, "import time\ndef main():\n    time.sleep(60)", timeout=10_000)
    assert response.status_code == 422 and error_of(response) == "timeout"
    assert 1_900 <= response.get_json()["duration_ms"] < 4_000


def test_past_capacity_is_503_busy_with_retry_after():
    app = create_app({"MAX_CONCURRENT_RUNS": 1, "QUEUE_WAIT_S": 0.0, "RETRY_AFTER_S": 2})
    started = threading.Event()

    def run_slowly() -> None:
        started.set()
        execute(app.test_client(), "import time\ndef main():\n    time.sleep(1.5)", timeout=3)

    slow = threading.Thread(target=run_slowly)
    slow.start()
    started.wait()
    capacity = app.extensions[EXTENSION].mode.capacity
    deadline = time.monotonic() + 30
    while capacity.in_use == 0:  # the slow run holds the one slot before the next asks for it
        assert time.monotonic() < deadline, "the slow run never took its slot"
        time.sleep(0.01)
    try:
        response = execute(app.test_client(), "def main(): return 1")
        assert response.status_code == 503 and error_of(response) == "busy"
        assert response.headers["Retry-After"] == "2"
    finally:
        slow.join()
    assert execute(app.test_client(), "def main(): return 1").status_code == 200


# ------------------------------------------------------------------------------------------
# input, stdin, files in and out (the jail-side attacks are in tests/jail/test_io.py)

ECHO = "import sys\ndef main(input):\n    return {'input': input, 'stdin': sys.stdin.read()}\n"
PNG = bytes.fromhex("89504e470d0a1a0a") + b"\0rest"


@pytest.mark.parametrize("value", [None, 0, "text", [1, {"a": None}], {"nested": {"é": [True, 2.5]}}])
def test_input_is_mains_one_argument(client, value):
    response = execute(client, ECHO, input=value)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["result"] == {"input": value, "stdin": ""}


@pytest.mark.parametrize("script, options, named", [
    ("def main():\n    return 1", {"input": 1}, "main() takes no argument"),
    ("def main(a, b):\n    return 1", {"input": 1}, "main(a, b)"),
    ("def main(input):\n    return 1", {}, "main(input)"),
    ("def main(*, key):\n    return 1", {"input": 1}, "main(*, key)"),
    ("class main:\n    def __init__(self):\n        pass", {"input": 1}, "main()"),
])
def test_a_main_that_cannot_take_the_call_is_422_main_signature(client, script, options, named):
    response = execute(client, script, **options)
    assert response.status_code == 422 and error_of(response) == "main_signature"
    assert named in response.get_json()["error"]["message"]


@pytest.mark.parametrize("script", [
    "def main(input=None):\n    return input", "def main(*args):\n    return list(args)",
    "import functools\n@functools.lru_cache\ndef main(input=None):\n    return input",
])
def test_a_main_that_can_take_either_call_runs(client, script):
    assert execute(client, script).status_code == 200
    assert execute(client, script, input=3).status_code == 200


def test_a_type_error_inside_main_stays_main_error(client):
    response = execute(client, "def main(input):\n    return len(input)", input=5)
    assert response.status_code == 422 and error_of(response) == "main_error"


def test_stdin_reaches_input_and_sys_stdin(client):
    text = "line one\nline two é\n" + "x" * 200_000
    response = execute(client, "import sys\ndef main():\n    return [input(), sys.stdin.read()]", stdin=text)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["result"] == ["line one", text[len("line one\n"):]]
    assert execute(client, "def main():\n    return input()").get_json()["error"]["code"] == "main_error"


def test_stdin_reaches_child_processes(client):
    script = ("import subprocess\ndef main():\n"
              "    return subprocess.run(['/usr/bin/cat'], capture_output=True).stdout.decode()")
    assert execute(client, script, stdin="to the child\n").get_json()["result"] == "to the child\n"


def test_files_in_and_out_through_the_api(client):
    script = ("import os\ndef main():\n    data = open('data/in.csv').read()\n"
              "    raw = open('logo.png', 'rb').read()\n    os.makedirs('out/sub')\n"
              "    open('out/sub/copy.png', 'wb').write(raw)\n    open('out/a.csv', 'w').write(data)\n"
              "    open('out/blob', 'wb').write(b'\\x00\\xff')\n    return len(raw)")
    response = execute(client, script, files={
        "data/in.csv": "a,b\n1,2\n",
        "logo.png": {"content": base64.b64encode(PNG).decode(), "encoding": "base64"}})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["result"] == len(PNG) and body["files_truncated"] is False
    assert [f["name"] for f in body["files"]] == ["a.csv", "blob", "sub/copy.png"]
    by_name = {f["name"]: f for f in body["files"]}
    assert base64.b64decode(by_name["sub/copy.png"]["content"]) == PNG
    assert by_name["sub/copy.png"]["media_type"] == "image/png"
    assert by_name["sub/copy.png"]["size"] == len(PNG)
    assert by_name["a.csv"]["media_type"] == "text/csv"
    assert by_name["blob"]["media_type"] == "application/octet-stream"
    assert all(f["encoding"] == "base64" for f in body["files"])


def test_files_come_back_with_a_422_too(client):
    response = execute(client, "def main():\n    open('out/log.txt', 'w').write('before')\n"
                               "    raise ValueError('x')")
    assert response.status_code == 422 and error_of(response) == "main_error"
    assert [f["name"] for f in response.get_json()["files"]] == ["log.txt"]


def test_every_answer_has_files_even_when_empty(client):
    body = execute(client, "def main():\n    return 1").get_json()
    assert body["files"] == [] and body["files_truncated"] is False


@pytest.mark.parametrize("name", [
    "..", "../x", "a/../b", "/etc/passwd", "a//b", "a/", "./a", "", "out", "out/x", "a\nb", "a\0b",
    "sp ace", "é", "ａ.txt", "a\\b", "x" * 256, "/".join(["d"] * 9), "/".join(["y" * 200] * 6),
    "\u202etxt.exe", "a:b"])
def test_a_hostile_file_name_is_400_invalid_file(client, name):
    response = execute(client, "def main():\n    return 1", files={name: "x"})
    assert response.status_code == 400 and error_of(response) == "invalid_file", name
    assert "file" in response.get_json()["error"]["message"]


def test_a_file_under_another_file_is_400_invalid_file(client):
    response = execute(client, "def main():\n    return 1", files={"a": "1", "a/b": "2"})
    assert response.status_code == 400 and error_of(response) == "invalid_file"


@pytest.mark.parametrize("content", ["not base64!", "YWJ", "YW Jj", "é"])
def test_bad_base64_is_400_invalid_file(client, content):
    response = execute(client, "def main():\n    return 1",
                       files={"f.bin": {"content": content, "encoding": "base64"}})
    assert response.status_code == 400 and error_of(response) == "invalid_file"


@pytest.mark.parametrize("files", [
    {"f.txt": {"content": "x", "encoding": "latin-1"}}, {"f.txt": 5}, {"f.txt": {"content": "x", "extra": 1}},
    {"f.txt": None}, [["f.txt", "x"]]])
def test_malformed_files_are_400_invalid_request(client, files):
    response = execute(client, "def main():\n    return 1", files=files)
    assert response.status_code == 400 and error_of(response) == "invalid_request"


@pytest.fixture(scope="module")
def small_caps():
    return create_app({"MAX_STDIN_BYTES": 1000, "MAX_INPUT_BYTES": 1000, "MAX_FILES": 3, "TMP_MB": 2,
                       "MAX_FILES_OUT": 3, "MAX_FILES_OUT_BYTES": 5000, "WARM_JAILS": 0}).test_client()


@pytest.mark.parametrize("options, cap", [
    ({"stdin": "é" * 501}, "stdin"),
    ({"input": ["x" * 1000]}, "input"),
    ({"files": {f"f{n}": "x" for n in range(4)}}, "PYSANDBOX_MAX_FILES"),
    ({"files": {"a": "x" * 600_000, "b": "y" * 500_000}}, "PYSANDBOX_TMP_MB"),
])
def test_inputs_over_their_caps_are_413_naming_the_cap(small_caps, options, cap):
    response = execute(small_caps, "def main(input=None):\n    return 1", **options)
    assert response.status_code == 413 and error_of(response) == "payload_too_large"
    assert cap in response.get_json()["error"]["message"]


def test_inputs_at_their_caps_run(small_caps):
    response = execute(small_caps, "import sys\ndef main(input):\n    return len(sys.stdin.read())",
                       stdin="x" * 1000, input=["y" * 990], files={"a": "x" * 524_288, "b": "", "c": ""})
    assert response.status_code == 200 and response.get_json()["result"] == 1000, response.get_json()


@pytest.mark.parametrize("script, names", [
    ("def main():\n    for n in range(10):\n        open(f'out/{n}.txt', 'w').write('x')",
     ["0.txt", "1.txt", "2.txt"]),
    ("def main():\n    open('out/a', 'w').write('x' * 4000)\n    open('out/b', 'w').write('x' * 4000)",
     ["a"]),
    ("def main():\n    open('out/big', 'w').write('x' * 6000)", []),
])
def test_files_out_past_a_cap_are_left_out_and_flagged(small_caps, script, names):
    body = execute(small_caps, script).get_json()
    assert [f["name"] for f in body["files"]] == names and body["files_truncated"] is True, body


def test_the_documented_name_pattern_is_the_rule_the_api_applies(client):
    """The OpenAPI document's propertyNames pattern (for clients and schemathesis) and the check."""
    doc = client.get("/openapi.json").get_json()
    files = doc["components"]["schemas"]["ExecuteRequest"]["properties"]["files"]
    pattern = re.compile(files["propertyNames"]["pattern"])
    names = ["a", "a.b", ".a", "..a", "...", "o", "ou", "outx", "out.txt", "x/out", "Out", "x" * 255,
             "d/" * 7 + "f", "..", ".", "out", "out/x", "a/../b", "a//b", "/a", "a/", "x" * 256,
             "d/" * 8 + "f", "a b", "é", "a\nb"]
    for name in names:
        assert (pattern.search(name) is not None) == (in_name_problem(name) is None), repr(name)
