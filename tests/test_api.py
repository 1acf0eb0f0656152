"""POST /execute and GET /health through Flask's test client, with the real jail behind it."""
import threading

import pytest

from api import create_app
from jail import host_cgroups


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
    response = execute(client, 'print("top")\ndef main():\n    print("in main")\n    return {"x": [1, 2.5, None, True, "é"]}')
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
    ({"data": "x" * (3 * 1024 * 1024), "content_type": "application/json"}, 413, "payload_too_large"),
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
    slow = threading.Thread(target=lambda: (started.set(), execute(
        app.test_client(), "import time\ndef main():\n    time.sleep(1.5)", timeout=3)))
    slow.start()
    started.wait()
    try:
        for _ in range(50):
            response = execute(app.test_client(), "def main(): return 1")
            if response.status_code == 503:
                break
        assert response.status_code == 503 and error_of(response) == "busy"
        assert response.headers["Retry-After"] == "2"
    finally:
        slow.join()
    assert execute(app.test_client(), "def main(): return 1").status_code == 200
