"""What an operator sees: /metrics after a known load, the JSON log lines, a Redis outage.

One real redis-server, gunicorn and RQ worker for the module, counting into one
prometheus_client multiprocess directory as in the one-container image; the scrape is read
with prometheus_client's own text parser and every count is asserted exactly.
"""
import json
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from api import create_app
from shared.logs import trace_fields
from tests.support.servers import free_port, gunicorn, redis_server, workers

SECRET = "s3cr3t-d0-n0t-l0g-7f3a"
"""Printed and returned by the scripts of the load: no log line may ever contain it."""
SCRIPT_MARK = "marker_in_the_script_source_91c2"
"""Text that exists only in the scripts' source."""
TRACE = "0123456789abcdef0123456789abcdef"
OK_RUNS = 3
FAILING = {  # a script for each 422 code that is cheap to cause
    "syntax_error": "def main(:\n    pass",
    "no_main": "x = 1",
    "main_error": "def main():\n    return 1 / 0",
    "invalid_result": "def main():\n    return {1, 2}",
    "timeout": "import time\ndef main():\n    time.sleep(10)",
    "memory_limit": "def main():\n    return len(bytearray(200 * 2**20))",
    "output_limit": "def main():\n    print('x' * 5000)",
    "result_too_large": "def main():\n    return 'x' * 5000",
    "no_result": "import sys\ndef main():\n    sys.exit(0)",
}
ENV = {"PYSANDBOX_MAX_CONCURRENT_RUNS": "1", "PYSANDBOX_QUEUE_WAIT_S": "0.2",
       "PYSANDBOX_MAX_OUTPUT_BYTES": "1000", "PYSANDBOX_MAX_RESULT_BYTES": "1000",
       "PYSANDBOX_MAX_TIMEOUT_S": "5", "GOOGLE_CLOUD_PROJECT": "test-project"}


def script(body: str) -> str:
    """The body, with the secret printed at import and the mark in a comment."""
    return f"# {SCRIPT_MARK}\nprint({SECRET!r})\n{body}\n"


class Service:
    def __init__(self, base: str, logs: Path, worker_logs: Path) -> None:
        self.base, self.logs, self.worker_logs = base, logs, worker_logs

    def post(self, body: str, query: str = "", **options: Any) -> requests.Response:
        return requests.post(f"{self.base}/execute{query}", json={"script": script(body), **options},
                             timeout=30)

    def lines(self, path: Path) -> list[dict]:
        """Every line of a log, each of which must be one JSON object."""
        found = []
        for line in path.read_text().splitlines():
            try:
                found.append(json.loads(line))
            except ValueError:
                pytest.fail(f"not a JSON line in {path.name}: {line!r}")
        return found


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "metrics").mkdir()
        env = {**ENV, "PROMETHEUS_MULTIPROC_DIR": str(root / "metrics")}
        with redis_server(root) as url, \
                workers(url, 1, env, log_path=root / "worker.log"), \
                gunicorn({**env, "REDIS_URL": url}, log_path=root / "api.log") as base:
            yield Service(base, root / "api.log", root / "worker.log")


def poll(base: str, job_id: str, within_s: float = 60) -> dict:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        body = requests.get(f"{base}/jobs/{job_id}", timeout=10).json()
        if body["status"] not in ("queued", "running"):
            return body
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not end in {within_s} s")


@pytest.fixture(scope="module")
def load(service: Service) -> dict[str, list[str]]:
    """A mixed load, with what it should produce; the job ids it queued."""
    for n in range(OK_RUNS):
        answer = service.post(f"def main():\n    return {n}")
        assert answer.status_code == 200 and answer.json()["result"] == n, answer.text
    traced = requests.post(f"{service.base}/execute", json={"script": script("def main(): return 7")},
                           headers={"X-Request-ID": "ops-test-1",
                                    "X-Cloud-Trace-Context": f"{TRACE}/42;o=1"}, timeout=30)
    assert traced.status_code == 200, traced.text
    for code, body in FAILING.items():
        answer = service.post(body, timeout=1, memory_mb=64)
        assert answer.status_code == 422 and answer.json()["error"]["code"] == code, answer.text
    # busy: the only run slot held by a slow run while another asks for it.
    slow = threading.Thread(target=service.post, args=("import time\ndef main():\n    time.sleep(1.5)",))
    slow.start()
    time.sleep(0.5)
    busy = service.post("def main(): return 1")
    slow.join()
    assert busy.status_code == 503 and busy.json()["error"]["code"] == "busy", busy.text
    jobs = []
    for _ in range(2):
        answer = service.post(f"def main():\n    return {SECRET!r}", query="?async=1")
        assert answer.status_code == 202, answer.text
        jobs.append(answer.json()["id"])
    for job_id in jobs:
        assert poll(service.base, job_id)["result"] == SECRET
    assert requests.get(f"{service.base}/no/such/path", timeout=10).status_code == 404
    assert requests.post(f"{service.base}/execute", data="{", timeout=10,
                         headers={"Content-Type": "application/json"}).status_code == 400
    return {"jobs": jobs}


def scrape(base: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of /metrics, keyed by name and labels, through prometheus_client's parser."""
    answer = requests.get(f"{base}/metrics", timeout=10)
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("text/plain")
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(answer.text) for sample in family.samples}


def total(samples: dict, name: str, **labels: str) -> float:
    """The sum of name's samples whose labels include these."""
    wanted = set(labels.items())
    return sum(value for (found, have), value in samples.items() if found == name and wanted <= have)


def test_a_scrape_counts_the_load_exactly(service: Service, load: dict) -> None:
    samples = scrape(service.base)
    runs = "pysandbox_runs_total"
    # Sync runs in gunicorn, async ones in the worker: one exposition for both processes.
    assert total(samples, runs, outcome="ok") == OK_RUNS + 1 + 1 + 2  # + traced, slow, async
    assert total(samples, runs, outcome="ok", jail="warm") + total(
        samples, runs, outcome="ok", jail="one-off") == OK_RUNS + 4
    for code in FAILING:
        assert total(samples, runs, outcome=code) == 1, code
        assert total(samples, "pysandbox_http_errors_total", code=code) == 1, code
    assert total(samples, runs) == OK_RUNS + 4 + len(FAILING)
    assert total(samples, "pysandbox_http_errors_total", code="busy") == 1
    assert total(samples, "pysandbox_http_errors_total", code="not_found") == 1
    assert total(samples, "pysandbox_http_errors_total", code="invalid_request") == 1
    assert total(samples, "pysandbox_http_errors_total") == len(FAILING) + 3
    requests_total = "pysandbox_http_requests_total"
    assert total(samples, requests_total, route="/execute", method="POST", status="200") == OK_RUNS + 2
    assert total(samples, requests_total, route="/execute", status="422") == len(FAILING)
    assert total(samples, requests_total, route="/execute", status="503") == 1
    assert total(samples, requests_total, route="/execute", status="202") == 2
    assert total(samples, requests_total, route="/execute", status="400") == 1
    assert total(samples, requests_total, route="unmatched", status="404") == 1
    assert total(samples, requests_total, route="/jobs/<job_id>") >= 2
    assert not any("no/such" in str(labels) for _, labels in samples), "raw paths are no labels"
    assert total(samples, "pysandbox_run_duration_seconds_count") == OK_RUNS + 4 + len(FAILING)
    assert total(samples, "pysandbox_queue_wait_seconds_count") == 2
    assert total(samples, "pysandbox_run_peak_memory_bytes_count") > 0
    assert total(samples, "pysandbox_run_slots") == 1
    assert total(samples, "pysandbox_run_slots_in_use") == 0
    assert total(samples, "pysandbox_warm_jails", state="total") == 2  # the API's one + the worker's one
    assert total(samples, "pysandbox_selftest_passed") == 1
    assert total(samples, "pysandbox_queue_up") == 1
    assert total(samples, "pysandbox_queue_persistent") == 0  # tests/support/servers.py: appendonly no
    assert total(samples, "pysandbox_workers") == 1
    assert total(samples, "pysandbox_queue_jobs", state="finished") == 2
    assert total(samples, "pysandbox_queue_jobs", state="queued") == 0
    held = total(samples, "pysandbox_storage_held_bytes")  # the two jobs' results, kept
    assert 0 < held == total(samples, "pysandbox_storage_client_held_bytes", client="anonymous")
    assert total(samples, "pysandbox_storage_budget_bytes") == 384 * 2**20


def test_logs_are_json_lines_with_cloud_logging_fields_and_no_script_text(
        service: Service, load: dict) -> None:
    api, worker = service.lines(service.logs), service.lines(service.worker_logs)
    for line in api + worker:
        assert line["severity"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), line
        assert isinstance(line["message"], str) and line["time"], line
    text = service.logs.read_text() + service.worker_logs.read_text()
    assert SECRET not in text and SCRIPT_MARK not in text
    access = [line for line in api if line["logger"] == "gunicorn.access"]
    traced = [line for line in access if line.get("request_id") == "ops-test-1"]
    assert len(traced) == 1, access[-5:]
    (line,) = traced
    assert line["httpRequest"]["requestMethod"] == "POST"
    assert line["httpRequest"]["requestUrl"] == "/execute" and line["httpRequest"]["status"] == 200
    assert line["httpRequest"]["latency"].endswith("s") and int(line["httpRequest"]["responseSize"]) > 0
    assert line["logging.googleapis.com/trace"] == f"projects/test-project/traces/{TRACE}"
    assert line["logging.googleapis.com/spanId"] == "42"
    assert line["outcome"] == "ok" and line["jail"] in ("warm", "one-off")
    assert line["duration_ms"] >= 0 and "cpu_ms" in line and "peak_memory_mb" in line
    failed = [line for line in access if line["httpRequest"]["status"] == 422]
    assert sorted(line["code"] for line in failed) == sorted(FAILING)
    assert [line["code"] for line in access if line["httpRequest"]["status"] == 503] == ["busy"]
    queued = [line["job_id"] for line in access if line["httpRequest"]["status"] == 202]
    assert queued == load["jobs"]
    ended = [line for line in worker if line["message"] == "job ended: ok"]
    assert sorted(line["job_id"] for line in ended) == sorted(load["jobs"])
    assert all(line["request_id"] and line["duration_ms"] >= 0 for line in ended)


def test_text_log_format_is_for_terminals() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "api.log"
        with gunicorn({"PYSANDBOX_LOG_FORMAT": "text", "PYSANDBOX_WARM_JAILS": "0"},
                      log_path=log) as base:
            assert requests.get(f"{base}/openapi.json", timeout=10).status_code == 200
        lines = log.read_text().splitlines()
    assert not any(line.startswith("{") for line in lines), lines[:5]
    assert any('"GET /openapi.json HTTP/1.1" 200' in line for line in lines), lines[-5:]


def test_a_redis_outage_is_503_queue_unavailable_and_passes_by_itself() -> None:
    """Redis stopped under a running API and worker: 503 queue_unavailable meanwhile; once it
    is back on the same port, 202 again and the same worker process runs jobs again."""
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as first_redis:
        port, data = free_port(), Path(tmp)
        url = first_redis.enter_context(redis_server(data, port))
        with workers(url, 1) as (worker,), gunicorn({"REDIS_URL": url, "PYSANDBOX_WARM_JAILS": "0"}) as base:
            submit = lambda: requests.post(f"{base}/execute?async=1",  # noqa: E731
                                           json={"script": "def main(): return 5"}, timeout=30)
            assert poll(base, submit().json()["id"])["result"] == 5
            first_redis.close()
            for _ in range(3):
                answer = submit()
                assert answer.status_code == 503, answer.text
                assert answer.json()["error"]["code"] == "queue_unavailable"
                assert answer.headers["Retry-After"]
            health = requests.get(f"{base}/health", timeout=30)
            assert health.json()["queue"]["redis"].startswith("unreachable"), health.text
            time.sleep(3)  # long enough for the worker to have noticed
            with redis_server(data, port):
                answer = submit()
                assert answer.status_code == 202, answer.text
                assert poll(base, answer.json()["id"])["result"] == 5
                assert worker.poll() is None, "the worker was not restarted: it reconnected"
                assert requests.get(f"{base}/health", timeout=30).json()["queue"]["redis"] == "ok"


def test_metrics_can_be_turned_off() -> None:
    app = create_app({"METRICS": False, "WARM_JAILS": 0})
    answer = app.test_client().get("/metrics")
    assert answer.status_code == 404 and answer.get_json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("header, fields", [
    (f"{TRACE}/42;o=1", {"logging.googleapis.com/trace": f"projects/p1/traces/{TRACE}",
                         "logging.googleapis.com/spanId": "42"}),
    (TRACE.upper(), {"logging.googleapis.com/trace": f"projects/p1/traces/{TRACE}"}),
    ("not-a-trace/1", {}), ("", {}), (None, {}),
])
def test_trace_fields_come_only_from_a_well_formed_header(monkeypatch: pytest.MonkeyPatch,
                                                          header: str | None, fields: dict) -> None:
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "p1")
    assert trace_fields(header) == fields
