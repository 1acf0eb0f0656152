"""The storage budget's accounting (shared/storage.py) on a real redis-server: reserve, settle,
release, prune; the worst-case bound against outcomes as large as the caps allow; and what a
real job keeps in Redis, with real workers."""
import base64
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis
from rq import Queue
from rq.job import Job

from api.job_queue import Budget, JobQueue
from api.metrics import storage_metrics
from jail import Limits, Outcome, OutFile, Status
from shared.queue import QUEUE_NAME, alive_key
from shared.storage import (
    CLIENTS,
    DUE,
    JOB_OVERHEAD_BYTES,
    JOBS,
    TOTAL,
    Ledger,
    allocated,
    payload_key,
    stored_result_bytes,
    worst_result_bytes,
)
from tests.support.servers import redis_server, workers

MIB = 2**20


@pytest.fixture
def redis_url(tmp_path) -> Iterator[str]:
    with redis_server(tmp_path) as url:
        yield url


@pytest.fixture
def redis(redis_url) -> Redis:
    return Redis.from_url(redis_url)


def largest_outcome(limits: Limits, failed: bool) -> Outcome:
    """An Outcome as large as the caps let a script make it: a result of floats written as
    `1e1` (9 bytes of pickle for 4 of JSON), output of invalid bytes (each decoded to U+FFFD,
    3 bytes), every file out with a name of 4-byte characters; or, failed, the longest message
    and traceback of 4-byte characters instead of a result."""
    floats = (limits.max_result_bytes - 2) // 4
    names = ["/".join(f"{n:02d}" + "\U0001F600" * 201 for _ in range(5))[:1024]
             for n in range(limits.max_files_out)]
    size = limits.max_files_out_bytes // limits.max_files_out
    files = tuple(OutFile(name, size, "application/octet-stream",
                          base64.b64encode(b"\0" * size).decode()) for name in names)
    common: dict[str, Any] = {"stdout": "\ufffd" * (limits.max_output_bytes // 2),
              "stderr": "\ufffd" * (limits.max_output_bytes // 2), "output_truncated": True,
              "duration_ms": 30_000, "cpu_ms": 30_000, "peak_memory_mb": 1024.0, "jail": "one-off",
              "files": files, "files_truncated": True}
    if failed:
        return Outcome(Status.MAIN_ERROR, message="\U0001F600" * 2_000,
                       traceback="\U0001F600" * 64_000, **common)
    return Outcome(Status.OK, result=[10.0] * floats, **common)


@pytest.mark.parametrize("failed", [False, True])
@pytest.mark.parametrize("limits", [Limits(), Limits(max_output_bytes=64 * 1024, max_result_bytes=4 * MIB,
                                                     max_files_out=2, max_files_out_bytes=MIB)])
def test_the_worst_case_bounds_what_rq_stores_of_the_largest_outcomes(limits, failed):
    stored = stored_result_bytes(largest_outcome(limits, failed).to_dict())
    assert stored <= worst_result_bytes(limits)
    if not failed:  # and is close to it: the bound is measured, not a guess
        assert stored > 0.8 * worst_result_bytes(limits)


@pytest.mark.parametrize("nbytes", [1, 16, 17, 4096, 5000, 14_929_908, 2**24, 2**24 + 1])
def test_allocated_is_what_redis_counts_for_a_value(redis, nbytes):
    """MEMORY USAGE of a string of nbytes, less the key's own few dozen bytes."""
    redis.set("k", b"v" * nbytes)
    assert 0 <= redis.memory_usage("k") - allocated(nbytes) <= 128


def test_metrics_label_clients_by_key_name_only():
    families = {family.name: family for family in storage_metrics(
        12, 100, {"key:alice": 5, "addr:10.0.0.1": 3, "addr:10.0.0.2": 4})}
    per_client = {sample.labels["client"]: sample.value
                  for sample in families["pysandbox_storage_client_held_bytes"].samples}
    assert per_client == {"alice": 5, "anonymous": 7}
    assert families["pysandbox_storage_held_bytes"].samples[0].value == 12


def held(redis: Redis) -> tuple[int, dict[str, int]]:
    total = int(redis.get(TOTAL) or 0)
    return total, {k.decode(): int(v) for k, v in redis.hgetall(CLIENTS).items()}  # type: ignore[union-attr]


def test_reserve_refuses_past_the_clients_budget_then_past_the_total(redis):
    ledger = Ledger(redis)
    assert ledger.reserve("j1", "key:a", 60, client_budget=100, total_budget=150) is None
    refused = ledger.reserve("j2", "key:a", 41, client_budget=100, total_budget=150)
    assert refused is not None and refused.client_full and refused.client_held == 60
    refused = ledger.reserve("j3", "key:b", 95, client_budget=100, total_budget=150)
    assert refused is not None and not refused.client_full and refused.total_held == 60
    assert ledger.reserve("j4", "key:b", 90, client_budget=100, total_budget=150) is None
    assert held(redis) == (150, {"key:a": 60, "key:b": 90}) == ledger.held()


def test_settle_converts_and_release_forgets_with_the_payload(redis):
    ledger = Ledger(redis)
    ledger.reserve("j1", "key:a", 1000, client_budget=10_000, total_budget=10_000)
    ledger.reserve("j2", "key:a", 500, client_budget=10_000, total_budget=10_000)
    ledger.settle("j1", 700, done=False)  # taken: its input dropped
    assert held(redis) == (1200, {"key:a": 1200})
    ledger.settle("j1", 30, done=True)  # ended: what was stored
    assert redis.hget(JOBS, "j1") == b"30 d key:a"
    redis.set(payload_key("j2"), b"input")
    ledger.release("j2")
    assert held(redis) == (30, {"key:a": 30}) and not redis.exists(payload_key("j2"))
    ledger.settle("unknown", 99, done=True)  # a job queued before the ledger: left alone
    assert held(redis) == (30, {"key:a": 30})


def test_prune_releases_jobs_whose_record_is_gone_and_settles_failed_ones(redis):
    ledger = Ledger(redis)
    for job_id in ("gone", "failed", "kept"):
        ledger.reserve(job_id, "key:a", 1_000_000, client_budget=10**7, total_budget=10**7)
    redis.set(payload_key("gone"), b"input")
    redis.hset("rq:job:failed", "status", "failed")
    redis.hset("rq:job:kept", "status", "finished")
    redis.expire("rq:job:kept", 500)
    ledger.held()
    assert held(redis)[0] == 3_000_000  # nothing is due before RECHECK_S
    redis.zadd(DUE, {"gone": 0, "failed": 0, "kept": 0})
    assert ledger.held() == (JOB_OVERHEAD_BYTES + 1_000_000, {"key:a": JOB_OVERHEAD_BYTES + 1_000_000})
    assert not redis.exists(payload_key("gone")) and not redis.hexists(JOBS, "gone")
    due = dict(redis.zrange(DUE, 0, -1, withscores=True))
    assert 400 < due[b"kept"] - time.time() <= 502  # looked at again when its record expires


def test_prune_settles_a_job_whose_worker_died(redis):
    """Taken by a worker, `started` in RQ: while its liveness key lives the worst case stays;
    once the key is gone (the worker died) the job comes down to its record."""
    ledger = Ledger(redis)
    for job_id in ("running", "lost"):
        ledger.reserve(job_id, "key:a", 1_000_000, client_budget=10**7, total_budget=10**7)
        ledger.settle(job_id, 900_000, done=False)
        redis.hset(f"rq:job:{job_id}", "status", "started")
    redis.set(alive_key("running"), 1, ex=10)
    redis.zadd(DUE, {"running": 0, "lost": 0})
    assert ledger.held()[0] == 900_000 + JOB_OVERHEAD_BYTES
    assert redis.hget(JOBS, "lost") == f"{JOB_OVERHEAD_BYTES} d key:a".encode()


def test_two_submits_at_once_never_both_take_the_last_room(redis):
    ledger, accepted = Ledger(redis), []
    barrier = threading.Barrier(16)

    def reserve(n: int) -> None:
        barrier.wait()
        if ledger.reserve(f"j{n}", "key:a", 10, client_budget=50, total_budget=1000) is None:
            accepted.append(n)

    threads = [threading.Thread(target=reserve, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(accepted) == 5 and held(redis) == (50, {"key:a": 50})


def test_a_job_keeps_no_input_once_taken_and_fits_its_overhead(redis_url, redis):
    """Through real workers: the input leaves Redis when a worker takes the job, the job's
    record carries no script, and what a small job keeps in Redis fits JOB_OVERHEAD_BYTES.
    A job in the old form (the input as arguments of worker.jobs.execute) still runs."""
    queue = JobQueue(redis_url, max_queued=10, max_queued_per_client=10, result_ttl_s=60,
                     budget=Budget(2**30, 2**29))
    script = "def main():\n    return 'marker-' + 'x' * 20"
    job = queue.submit(script, Limits(), None, "r1", "key:a")
    assert redis.exists(payload_key(job.id)) and b"marker" not in redis.hget(job.key, "data")
    old = Queue(QUEUE_NAME, connection=redis).enqueue("worker.jobs.execute", script,
                                                      {"timeout_s": 5.0}, result_ttl=60)
    with workers(redis_url, 1):
        for each in (job, old):
            deadline = time.monotonic() + 60
            while each.get_status(refresh=True).value != "finished":
                assert time.monotonic() < deadline, each.get_status()
                time.sleep(0.05)
    old_value = Job.fetch(old.id, connection=redis).return_value()
    assert old_value is not None and old_value["result"] == "marker-" + "x" * 20
    assert not redis.exists(payload_key(job.id))
    keys = [key for key in redis.scan_iter() if job.id.encode() in key]
    kept = sum(redis.memory_usage(key) or 0 for key in keys)
    entry = int(redis.hget(JOBS, job.id).split()[0])
    assert kept <= entry <= stored_result_bytes(job.return_value()) + JOB_OVERHEAD_BYTES, (keys, kept)


def test_a_job_canceled_before_it_ran_drops_its_input_and_keeps_only_its_record(redis_url, redis):
    """No worker: the job stays queued until canceled. Its input goes at once, its record
    expires with the result TTL (RQ alone keeps a canceled job forever), its storage is the
    record's."""
    queue = JobQueue(redis_url, max_queued=10, max_queued_per_client=10, result_ttl_s=60,
                     budget=Budget(2**30, 2**29))
    job = queue.submit("def main():\n    return 1", Limits(), None, "r1", "key:a")
    assert int(redis.hget(JOBS, job.id).split()[0]) > worst_result_bytes(Limits())
    assert queue.cancel(job.id, "key:a").status == "canceled"
    assert not redis.exists(payload_key(job.id)) and 0 < redis.ttl(job.key) <= 60
    assert redis.hget(JOBS, job.id) == f"{JOB_OVERHEAD_BYTES} d key:a".encode()
    assert held(redis) == (JOB_OVERHEAD_BYTES, {"key:a": JOB_OVERHEAD_BYTES})
