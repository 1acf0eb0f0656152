"""The queue's contract, shared by the API (which enqueues) and the workers (which run).

The API imports only this module and shared/storage.py, never the job code: it enqueues
JOB_FUNCTION by name, with no arguments: the job's input is in its own key (storage.payload_key).
A per-job key exists while a live worker is running that job (and ALIVE_TTL_S after): RQ notices a dead
worker only after its heartbeat TTL (a minute or more); this key, refreshed every second
and expiring after ALIVE_TTL_S, lets the API say `worker_lost` within seconds (is_lost, which the
callbacks' sweep for lost jobs follows too).

Canceling: the API sets a job's cancel key (DELETE /jobs/<id>); the worker running it polls
that key every CANCEL_KEY_POLL_S and sets the run's cancel event, which kills its jail. RQ's own
stop-job command would kill the work-horse, but these workers run jobs in-process
(SimpleWorker, next to their warm jail), so the jail has to be told instead.
"""
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from redis import ConnectionPool, Redis
from redis.exceptions import RedisError
from rq.job import Job

QUEUE_NAME = "pysandbox"
JOB_FUNCTION = "worker.jobs.run_stored"
ALIVE_TTL_S = 10
REFRESH_S = 1.0
CANCEL_KEY_POLL_S = 0.2
"""How often a worker running a job looks for its cancel key (jail/pipes.py's CANCEL_POLL_S is how
often a run looks at its cancel event)."""
RECONNECT_S = 1.0
"""How often wait_for tries Redis again."""
PROBE_TIMEOUT_S = 5.0
LOST_MARKS = ("AbandonedJobError", "redis.exceptions.")
"""In a failed job's exc_info, what says its worker was lost: RQ's AbandonedJobError (the worker died
and RQ noticed), or a Redis error (the worker lost Redis while storing the outcome, and RQ recorded
that once Redis was back)."""
HOLDER_KEY = "holder_key"
"""The job's meta: the Redis key that exists while its session's holder lives (the worker's key,
or the API process's): without it, a queued call is failed `session_ended` (`lost`). A job with it
is a session's call (shared/session_calls.py), which no queue worker runs."""


def alive_key(job_id: str) -> str:
    """The Redis key that says job_id is being run right now."""
    return f"pysandbox:alive:{job_id}"


def cancel_key(job_id: str) -> str:
    """The Redis key that says job_id was canceled by its client."""
    return f"pysandbox:cancel:{job_id}"


def is_alive(redis: Redis, job_id: str) -> bool:
    """True while a worker is running job_id."""
    return bool(redis.exists(alive_key(job_id)))


def is_lost(redis: Redis, job: Job) -> bool:
    """True when a started job's worker is gone: the job began ALIVE_TTL_S ago or more, its alive key
    has expired, and Redis has been up for ALIVE_TTL_S (a worker that outlived Redis's outage
    refreshes its key within a beat). GET /jobs/<id> then answers `worker_lost`, and its callback is
    made due (shared/callbacks.py's sweep_lost)."""
    started = job.started_at
    if started is None:
        return False
    if started.tzinfo is None:
        started = started.replace(tzinfo=UTC)
    age_s = (datetime.now(UTC) - started).total_seconds()
    return not (age_s < ALIVE_TTL_S or is_alive(redis, job.id)
                or int(redis.info("server")["uptime_in_seconds"]) < ALIVE_TTL_S)


def failed_lost(exc_info: str | None) -> bool:
    """True when a failed job failed because its worker was lost (LOST_MARKS), not its sandbox."""
    return any(mark in (exc_info or "") for mark in LOST_MARKS)


def wait_for(redis: Redis) -> None:
    """Until Redis answers a PING (at least RECONNECT_S: never a busy loop). The PING goes on a
    connection of its own with short timeouts: RQ gives the worker's connections a read timeout
    of minutes (for BLPOP), and a port whose far end is not up yet (a forwarded port of a host
    still booting) may accept a connection and never answer."""
    pool = redis.connection_pool
    short = {"socket_timeout": PROBE_TIMEOUT_S, "socket_connect_timeout": PROBE_TIMEOUT_S}
    probe = Redis(connection_pool=ConnectionPool(connection_class=pool.connection_class,
                                                 **{**pool.connection_kwargs, **short}))
    try:
        while True:
            time.sleep(RECONNECT_S)
            try:
                probe.ping()
                return
            except RedisError:
                pass
    finally:
        probe.close()


def request_cancel(redis: Redis, job_id: str, ttl_s: int) -> None:
    """Ask whichever worker runs (or will take) job_id to stop it."""
    redis.set(cancel_key(job_id), 1, ex=ttl_s)


def is_canceled(redis: Redis, job_id: str) -> bool:
    """True once job_id's client canceled it."""
    return bool(redis.exists(cancel_key(job_id)))


@contextmanager
def keep_alive(redis: Redis, job_id: str) -> Iterator[threading.Event]:
    """Refresh job_id's key while the body runs, and yield an event set once the job is
    canceled. A Redis outage meanwhile does not stop the run: the beat retries. The key is left
    to expire (ALIVE_TTL_S) rather than deleted: RQ stores the job's outcome a moment after the
    body returns, and until then the job must not look lost (is_lost) to GET /jobs/<id> or to
    the callbacks' sweep."""
    key, done, canceled = alive_key(job_id), threading.Event(), threading.Event()

    def beat() -> None:
        refresh_at = 0.0
        while not done.wait(CANCEL_KEY_POLL_S):
            refresh_at += CANCEL_KEY_POLL_S
            try:
                if refresh_at >= REFRESH_S:
                    redis.set(key, 1, ex=ALIVE_TTL_S)
                    refresh_at = 0.0
                if not canceled.is_set() and is_canceled(redis, job_id):
                    canceled.set()
            except RedisError:
                pass  # Redis is away: try again at the next beat

    redis.set(key, 1, ex=ALIVE_TTL_S)
    if is_canceled(redis, job_id):
        canceled.set()
    thread = threading.Thread(target=beat, name=f"alive-{job_id}", daemon=True)
    thread.start()
    try:
        yield canceled
    finally:
        done.set()
        thread.join()
