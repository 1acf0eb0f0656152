"""Async runs through a real redis-server and real RQ workers (python -m worker)."""
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from redis import Redis

from api import create_app
from shared.storage import DUE, JOB_OVERHEAD_BYTES, Ledger
from tests.support.servers import free_port, redis_server, workers
from worker.__main__ import DEAD_PEER_OPTIONS, connect


@pytest.fixture
def redis_url(tmp_path) -> Iterator[str]:
    """A private, throwaway redis-server."""
    with redis_server(tmp_path) as url:
        yield url


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (RQ's work-horse has its own process group)."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    os.kill(pid, signal.SIGSTOP)
    for child in children.split():
        kill_tree(int(child))
    os.kill(pid, signal.SIGKILL)


def submit(client, script: str, **options) -> str:
    response = client.post("/execute?async=1", json={"script": script, **options})
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert body["status"] == "queued" and response.headers["Location"] == f"/jobs/{body['id']}"
    return body["id"]


def poll(client, job_id: str, within_s: float = 30) -> dict:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        response = client.get(f"/jobs/{job_id}")
        assert response.status_code == 200
        body = response.get_json()
        if body["status"] not in ("queued", "running"):
            return body
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {body['status']} after {within_s} s")


@pytest.mark.parametrize("script, code", [
    ("def main(:", "syntax_error"),
    ("x = 1", "no_main"),
    ("def main():\n    raise KeyError('k')", "main_error"),
    ("def main():\n    return {1}", "invalid_result"),
    ("import time\ndef main():\n    time.sleep(5)", "timeout"),
    ("def main():\n    return bytearray(600 * 2**20)", "memory_limit"),
    ("def main():\n    while True: print('z' * 1000)", "output_limit"),
    ("def main():\n    return 'x' * (2 * 2**20)", "result_too_large"),
    ("import os\ndef main():\n    os._exit(0)", "no_result"),
])
def test_async_errors_carry_the_same_codes_as_sync(redis_url, script, code):
    client = create_app({"REDIS_URL": redis_url}).test_client()
    with workers(redis_url, 1):
        body = poll(client, submit(client, script, timeout=1, memory_mb=128))
    assert body["status"] == "failed" and body["error"]["code"] == code
    sync = client.post("/execute", json={"script": script, "timeout": 1, "memory_mb": 128})
    assert sync.status_code == 422 and sync.get_json()["error"]["code"] == code


def test_async_success_has_the_sync_fields(redis_url):
    client = create_app({"REDIS_URL": redis_url}).test_client()
    with workers(redis_url, 1):
        body = poll(client, submit(client, "def main():\n    print('p')\n    return {'r': [1]}"))
    assert body["status"] == "finished" and body["result"] == {"r": [1]} and body["stdout"] == "p\n"


def test_bad_input_is_rejected_before_enqueueing(redis_url):
    client = create_app({"REDIS_URL": redis_url}).test_client()
    response = client.post("/execute?async=1", json={"script": ""})
    assert response.status_code == 400
    assert client.post("/execute?async=maybe", json={"script": "x"}).status_code == 400
    assert Redis.from_url(redis_url).llen("rq:queue:pysandbox") == 0


def test_unknown_or_malformed_job_ids_are_404(redis_url):
    client = create_app({"REDIS_URL": redis_url}).test_client()
    for job_id in ("nope", "12345678-1234-1234-1234-123456789012", "X" * 300):
        response = client.get(f"/jobs/{job_id}")
        assert response.status_code == 404 and response.get_json()["error"]["code"] == "job_not_found"


def test_a_full_queue_answers_503_busy(redis_url):
    client = create_app({"REDIS_URL": redis_url, "MAX_QUEUED_JOBS": 3,
                         "MAX_QUEUED_JOBS_PER_CLIENT": 3}).test_client()
    for _ in range(3):
        submit(client, "def main(): return 1")
    response = client.post("/execute?async=1", json={"script": "def main(): return 1"})
    assert response.status_code == 503 and response.get_json()["error"]["code"] == "busy"
    assert int(response.headers["Retry-After"]) >= 1


def test_fifty_jobs_on_two_workers_all_finish_right(redis_url):
    """Fifty in flight at once: a share of the queue and a storage budget (each job reserves
    ~22 MiB, the worst case of the default caps) that hold them, for this one client."""
    client = create_app({"REDIS_URL": redis_url, "MAX_QUEUED_JOBS_PER_CLIENT": 50,
                         "REDIS_MEMORY_MB": 2048, "STORAGE_BUDGET_MB": 1536,
                         "STORAGE_BUDGET_PER_CLIENT_MB": 1536}).test_client()
    with workers(redis_url, 2):
        ids = {submit(client, f"def main():\n    return {n} * {n}"): n for n in range(50)}
        results = {job_id: poll(client, job_id, within_s=120) for job_id in ids}
    assert all(body["status"] == "finished" for body in results.values())
    assert {job_id: body["result"] for job_id, body in results.items()} == {
        job_id: n * n for job_id, n in ids.items()}


def test_a_worker_killed_mid_job_leaves_the_job_failed_worker_lost(redis_url):
    client = create_app({"REDIS_URL": redis_url}).test_client()
    with workers(redis_url, 1) as (proc,):
        job_id = submit(client, "import time\ndef main():\n    time.sleep(20)", timeout=25)
        deadline = time.monotonic() + 15
        while client.get(f"/jobs/{job_id}").get_json()["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        killed_at = time.monotonic()
        kill_tree(proc.pid)  # the worker, its work-horse and the jail, as a container kill does
        body = poll(client, job_id, within_s=30)
    assert body["status"] == "failed" and body["error"]["code"] == "worker_lost"
    assert time.monotonic() - killed_at < 25
    redis = Redis.from_url(redis_url)  # its storage comes down to its record once it is looked at
    redis.zadd(DUE, {job_id: 0})
    assert Ledger(redis).held()[0] == JOB_OVERHEAD_BYTES


def test_a_job_that_ends_while_redis_is_away_is_answered_and_its_worker_works_on(tmp_path):
    """Redis (append-only, as compose runs it) stops while a worker runs a job, and comes back on
    the same port after the run ended: the worker stored the outcome once Redis answered (not
    worker_lost), the job names that worker, and the worker takes the next job without a restart."""
    port, durable = free_port(), ("--appendonly", "yes", "--appendfsync", "always")
    log = tmp_path / "worker.log"
    with ExitStack() as first_redis:
        url = first_redis.enter_context(redis_server(tmp_path, port, *durable))
        client = create_app({"REDIS_URL": url}).test_client()
        with workers(url, 1, log_path=log) as (proc,):
            job_id = submit(client, "import time\ndef main():\n    time.sleep(2)\n    return 7", timeout=10)
            deadline = time.monotonic() + 15
            while (body := client.get(f"/jobs/{job_id}").get_json())["status"] != "running":
                assert time.monotonic() < deadline, body
                time.sleep(0.05)
            assert body["worker"].startswith(f"{socket.gethostname()}."), body
            first_redis.close()  # Redis stops mid-run
            time.sleep(3)  # the run ends while it is away
            with redis_server(tmp_path, port, *durable):
                ended = poll(client, job_id)
                assert (ended["status"], ended.get("result")) == ("finished", 7), (ended, log.read_text())
                assert ended["worker"] == body["worker"], ended
                after = poll(client, submit(client, "def main(): return 8"))
                assert (after["status"], after["result"]) == ("finished", 8), after
                assert proc.poll() is None


def test_without_redis_async_is_503_queue_unavailable():
    client = create_app({"REDIS_URL": ""}).test_client()
    response = client.post("/execute?async=1", json={"script": "def main(): return 1"})
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "queue_unavailable"


def test_redis_going_away_is_503_not_500(redis_url):
    client = create_app({"REDIS_URL": redis_url}).test_client()
    Redis.from_url(redis_url).shutdown(nosave=True)
    response = client.post("/execute?async=1", json={"script": "def main(): return 1"})
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "queue_unavailable"


def test_sync_requests_can_be_served_by_workers_alone(redis_url):
    """An API that only enqueues (PYSANDBOX_EXECUTE_VIA_QUEUE) needs no jail privileges."""
    client = create_app({"REDIS_URL": redis_url, "EXECUTE_VIA_QUEUE": True}).test_client()
    assert client.get("/health").status_code == 503
    with workers(redis_url, 1):
        assert client.get("/health").get_json()["queue"]["workers"] == 1
        response = client.post("/execute", json={"script": "def main():\n    print(1)\n    return 2"})
        assert response.status_code == 200 and response.get_json()["result"] == 2
        response = client.post("/execute", json={"script": "def main(): return float('inf')"})
        assert response.status_code == 422 and response.get_json()["error"]["code"] == "invalid_result"


def test_a_sync_run_no_worker_takes_is_503_busy_and_cancelled(redis_url):
    client = create_app({"REDIS_URL": redis_url, "EXECUTE_VIA_QUEUE": True,
                         "QUEUE_WAIT_S": 0.3}).test_client()
    response = client.post("/execute", json={"script": "def main(): return 1"})
    assert response.status_code == 503 and response.get_json()["error"]["code"] == "busy"
    assert int(response.headers["Retry-After"]) >= 1
    assert Redis.from_url(redis_url).llen("rq:queue:pysandbox") == 0  # it will not run later


def test_async_jobs_carry_input_stdin_and_files_in_and_out(redis_url):
    client = create_app({"REDIS_URL": redis_url}).test_client()
    script = ("import sys\ndef main(input):\n    open('out/r.txt', 'w').write(open('in/d.txt').read())\n"
              "    return [input, sys.stdin.read()]")
    with workers(redis_url, 1):
        body = poll(client, submit(client, script, input={"k": [1]}, stdin="s\n",
                                   files={"in/d.txt": {"content": "aGk=", "encoding": "base64"}}))
        failed = poll(client, submit(client, "def main():\n    return 1", input=2))
    assert body["status"] == "finished" and body["result"] == [{"k": [1]}, "s\n"], body
    assert body["files"] == [{"name": "r.txt", "size": 2, "media_type": "text/plain", "encoding": "base64",
                              "content": "aGk="}] and body["files_truncated"] is False
    assert failed["status"] == "failed" and failed["error"]["code"] == "main_signature"


def test_a_workers_redis_connection_notices_a_lost_redis_host(redis_url):
    """A Redis host lost to a power cut sends no reset: the worker's TCP connections carry
    keepalive probes and a user timeout, so they end within ~15 s, not RQ's ~415 s read timeout."""
    redis = connect(redis_url)
    assert redis.ping()
    connection = redis.connection_pool.get_connection()
    try:
        sock = connection._sock
        assert sock is not None and sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert {option: sock.getsockopt(socket.IPPROTO_TCP, option)
                for option in DEAD_PEER_OPTIONS} == DEAD_PEER_OPTIONS
    finally:
        redis.connection_pool.release(connection)
        redis.close()
