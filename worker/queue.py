"""The queue's contract, shared by the API (which enqueues) and the workers (which run).

The API imports only this module, never the job code: it enqueues JOB_FUNCTION by name.
A per-job key exists only while a live worker is running that job: RQ notices a dead
worker only after its heartbeat TTL (a minute or more); this key, refreshed every second
and expiring after ALIVE_TTL_S, lets the API say `worker_lost` within seconds.
"""
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from redis import Redis

QUEUE_NAME = "pysandbox"
JOB_FUNCTION = "worker.jobs.execute"
ALIVE_TTL_S = 10
REFRESH_S = 1.0


def alive_key(job_id: str) -> str:
    """The Redis key that says job_id is being run right now."""
    return f"pysandbox:alive:{job_id}"


def is_alive(redis: Redis, job_id: str) -> bool:
    """True while a worker is running job_id."""
    return bool(redis.exists(alive_key(job_id)))


@contextmanager
def keep_alive(redis: Redis, job_id: str) -> Iterator[None]:
    """Refresh job_id's key while the body runs; delete it afterwards."""
    key, done = alive_key(job_id), threading.Event()

    def beat() -> None:
        while not done.wait(REFRESH_S):
            redis.set(key, 1, ex=ALIVE_TTL_S)

    redis.set(key, 1, ex=ALIVE_TTL_S)
    thread = threading.Thread(target=beat, name=f"alive-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        redis.delete(key)
