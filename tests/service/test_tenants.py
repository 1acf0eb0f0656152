"""Two keyed tenants against real gunicorn, redis-server and workers: a job is only its own
client's (404 for anyone else, as for an unknown id), no /jobs/<id> answers 500, and one
tenant filling its storage budget neither refuses the other nor loses an accepted job."""
import base64
import http.client
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from redis import Redis
from rq import Queue

from api import create_app
from shared.queue import QUEUE_NAME
from shared.storage import CLIENTS, JOBS
from tests.service.test_clients import KEYS, bearer, sha256
from tests.support.servers import gunicorn, redis_server, workers

MIB = 2**20
KEYED = {"PYSANDBOX_API_KEYS": ",".join(f"{name}:{sha256(key)}" for name, key in KEYS.items())}
SLEEPER = {"script": "import time\ndef main():\n    time.sleep(20)", "timeout": 25}
QUICK = {"script": "def main():\n    return 42"}


@pytest.fixture(scope="module")
def service() -> Iterator[tuple[str, str]]:
    """gunicorn with keys for alice and bob, a redis-server and one worker: (url, redis url)."""
    with tempfile.TemporaryDirectory() as directory, redis_server(Path(directory)) as redis_url, \
            gunicorn({"REDIS_URL": redis_url, **KEYED}) as url, workers(redis_url, 1):
        yield url, redis_url


@pytest.fixture(scope="module")
def alices_job(service) -> str:
    return submit(service[0], "alice", QUICK)


def submit(url: str, name: str, body: dict) -> str:
    answer = requests.post(f"{url}/execute?async=1", json=body, headers=bearer(name), timeout=30)
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


def wait_for(url: str, name: str, job_id: str, statuses: set[str], within_s: float = 60) -> dict:
    deadline = time.monotonic() + within_s
    while True:
        body = requests.get(f"{url}/jobs/{job_id}", headers=bearer(name), timeout=30).json()
        if body["status"] in statuses:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


def answers(url: str, name: str, job_id: str) -> list[tuple[int, object]]:
    """GET, HEAD and DELETE of a job as name: each status, with its JSON body (HEAD: none)."""
    found = []
    for method in ("GET", "HEAD", "DELETE"):
        answer = requests.request(method, f"{url}/jobs/{job_id}", headers=bearer(name), timeout=30)
        found.append((answer.status_code, answer.json() if answer.content else None))
    return found


def test_a_tenant_cannot_see_or_cancel_anothers_jobs_but_its_own(service):
    url, _ = service
    finished = submit(url, "alice", QUICK)
    wait_for(url, "alice", finished, {"finished"})
    running = submit(url, "alice", SLEEPER)
    wait_for(url, "alice", running, {"running"})
    unknown = answers(url, "bob", str(uuid.uuid4()))
    assert unknown == [(404, {"error": {"code": "job_not_found",
                                        "message": "no such job, or its result has expired"}}),
                       (404, None), unknown[0]]
    assert answers(url, "bob", finished) == unknown
    assert answers(url, "bob", running) == unknown
    assert wait_for(url, "alice", running, {"running"})["status"] == "running"  # bob's DELETE did nothing
    own = requests.get(f"{url}/jobs/{finished}", headers=bearer("alice"), timeout=30)
    assert own.status_code == 200 and own.json()["result"] == 42
    assert requests.head(f"{url}/jobs/{finished}", headers=bearer("alice"), timeout=30).status_code == 200
    canceled = requests.delete(f"{url}/jobs/{running}", headers=bearer("alice"), timeout=30)
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"


def test_a_job_queued_before_owners_were_recorded_is_nobodys(service):
    url, redis_url = service
    old = Queue(QUEUE_NAME, connection=Redis.from_url(redis_url)).enqueue(
        "worker.jobs.execute", QUICK["script"], {}, meta={"request_id": "r"}, result_ttl=60)
    for name in KEYS:
        assert [status for status, _ in answers(url, name, old.id)] == [404, 404, 404]


@pytest.mark.parametrize("tail", ["%0a", "%0d%0a", "%00", "%20", "%C3%A9", "%ff", "/", "x" * 3000,
                                  "%2F..%2F..", ";", "%E2%80%A8", "%0b"])
def test_no_job_id_answers_500(service, alices_job, tail):
    """Hostile ids after a real job's id, sent raw (no client-side quoting); the id alone too,
    upper-cased. Before: `<id>%0a` passed the check (re.match with $) and RQ raised: 500."""
    url, _ = service
    job_id = alices_job
    host = urlsplit(url)
    for path in (f"/jobs/{job_id}{tail}", f"/jobs/{job_id.upper()}", f"/jobs/{tail}"):
        for method in ("GET", "HEAD", "DELETE"):
            conn = http.client.HTTPConnection(host.hostname, host.port, timeout=30)
            conn.putrequest(method, path, skip_accept_encoding=True)
            conn.putheader("Authorization", f"Bearer {KEYS['alice']}")
            conn.endheaders()
            answer = conn.getresponse()
            body = answer.read()
            conn.close()
            assert answer.status < 500, (method, path, answer.status, body[:300])
            assert answer.status in (400, 404), (method, path, answer.status)


def test_keys_off_a_job_belongs_to_its_address(tmp_path):
    """No worker: the job stays queued. Another address gets 404, its own reads and cancels it."""
    with redis_server(tmp_path) as redis_url:
        client = create_app({"REDIS_URL": redis_url}).test_client()
        here, there = {"REMOTE_ADDR": "10.0.0.1"}, {"REMOTE_ADDR": "10.0.0.2"}
        job_id = client.post("/execute?async=1", json=QUICK, environ_base=here).get_json()["id"]
        for method in (client.get, client.head, client.delete):
            assert method(f"/jobs/{job_id}", environ_base=there).status_code == 404
        assert client.get(f"/jobs/{job_id}", environ_base=here).get_json()["status"] == "queued"
        assert client.delete(f"/jobs/{job_id}", environ_base=here).get_json()["status"] == "canceled"


FLOOD = ("import os\ndef main():\n    open('out/noise.bin', 'wb').write(os.urandom(8 * 2**20))\n"
         "    return len(open('in.bin', 'rb').read())")
"""A's job: an input of ~6 MiB of files, 8 MiB of random bytes out (~14 MB as RQ stores it)."""
B_JOB = {"script": "def main(input):\n    print('y' * (2**20 - 64))\n    return len(input)",
         "input": "b" * (MIB - 64)}
"""B's job: a 1 MiB input, a 1 MiB output."""
REDIS_MB, BUDGET_MB, CLIENT_MB = 200, 150, 70


def test_one_tenant_at_its_storage_budget_neither_refuses_the_other_nor_loses_a_job(tmp_path):
    """A floods with jobs that keep ~14 MB of results each, until its budget is full of them;
    B's job is then accepted and finishes. Redis (maxmemory as configured, no eviction) never
    refuses a write, and every accepted job finishes. Before the budget, A's flood filled
    Redis: B was answered 503 queue_unavailable and A's later jobs ended worker_lost."""
    settings = {**KEYED, "PYSANDBOX_REDIS_MEMORY_MB": str(REDIS_MB),
                "PYSANDBOX_STORAGE_BUDGET_MB": str(BUDGET_MB),
                "PYSANDBOX_STORAGE_BUDGET_PER_CLIENT_MB": str(CLIENT_MB)}
    files = {"in.bin": {"content": base64.b64encode(b"\1" * (6 * MIB)).decode(), "encoding": "base64"}}
    with redis_server(tmp_path, None, "--maxmemory", f"{REDIS_MB}mb",
                      "--maxmemory-policy", "noeviction") as redis_url, \
            gunicorn({"REDIS_URL": redis_url, **settings}) as url, workers(redis_url, 2):
        accepted, refusals, deadline = [], dict[str, int](), time.monotonic() + 120
        while time.monotonic() < deadline:
            answer = requests.post(f"{url}/execute?async=1", json={"script": FLOOD, "files": files},
                                   headers=bearer("alice"), timeout=60)
            if answer.status_code == 202:
                accepted.append(answer.json()["id"])
                continue
            code = answer.json()["error"]["code"]
            refusals[code] = refusals.get(code, 0) + 1
            assert code == "storage_budget_exceeded" and answer.status_code == 503, answer.text
            assert answer.headers["Retry-After"] == "1"
            ended = [wait_for(url, "alice", job_id, {"finished", "failed", "canceled"})
                     for job_id in accepted]
            if refusals[code] > 1:  # refused with none of its jobs running: full of results
                break
            time.sleep(0.2)
        assert refusals and len(accepted) >= 3, (accepted, refusals)
        b_job = submit(url, "bob", B_JOB)
        b_body = wait_for(url, "bob", b_job, {"finished", "failed", "canceled"})
        health = requests.get(f"{url}/health", timeout=30).json()["queue"]["storage"]
        redis = Redis.from_url(redis_url)
        info, errors = redis.info("memory"), redis.info("errorstats")
        alice_held = int(redis.hget(CLIENTS, "key:alice"))  # type: ignore[arg-type]
        kept = {job_id: (sum(redis.memory_usage(key) or 0 for key in redis.scan_iter(f"*{job_id}*")),
                         int(redis.hget(JOBS, job_id).split()[0]))  # type: ignore[union-attr]
                for job_id in [*accepted, b_job]}
    print(f"\nstorage flood: A accepted {len(accepted)}, refused {refusals}; A holds {alice_held} B, "
          f"all {health['held_bytes']} B of {health['budget_bytes']}; redis peak "
          f"{info['used_memory_peak']} B of {REDIS_MB * MIB}")
    assert b_body["status"] == "finished" and b_body["result"] == MIB - 64, b_body
    assert len(b_body["stdout"]) == MIB - 63
    assert all(body["status"] == "finished" and body["files"][0]["size"] == 8 * MIB
               for body in ended), [body.get("error") for body in ended]
    assert all(memory <= held for memory, held in kept.values()), kept  # Redis's own count
    assert not any("OOM" in name for name in errors), errors
    assert info["used_memory_peak"] < REDIS_MB * MIB, info["used_memory_peak_human"]
    assert CLIENT_MB * MIB * 0.6 < alice_held <= CLIENT_MB * MIB
    assert alice_held < health["held_bytes"] <= BUDGET_MB * MIB, health
