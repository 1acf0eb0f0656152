"""Queued runs on RQ/Redis: enqueue a script, report a job's state by id.

The API's client of the queue: it answers in domain values (a JobState, an Outcome, a Fault)
and raises QueueError subclasses; the HTTP edge (api/responses.py) renders both. A session's
queued call is a job too, recorded here and run by its session's holder (shared/session_calls.py)."""
import functools
import logging
import pickle
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any, ParamSpec, TypeVar

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Worker
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.utils import now

from jail import Limits, Outcome, RunInput, Status
from jail.admission import ADMIT_WAIT_S
from shared import callbacks
from shared.queue import HOLDER_KEY, JOB_FUNCTION, QUEUE_NAME, failed_lost, is_lost, request_cancel
from shared.session_calls import ENDED, SESSION, fail_ended
from shared.storage import JOB_OVERHEAD_BYTES, Ledger, Refusal, allocated, payload_key, worst_result_bytes

JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
"""A job id as RQ makes it (a uuid4); checked with fullmatch, so no trailing newline passes."""
RQ_BACKSTOP_S = 30
"""RQ's own job timeout is the jail's wall limit plus this: a backstop, never the limit."""
WAITING = {JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED, JobStatus.CREATED}
WAITING_NAMES = {status.value for status in WAITING}
CANCEL_WAIT_S = 3.0
"""How long DELETE waits for a running job's worker to confirm it killed the jail."""
log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")


def client_jobs_key(client: str) -> str:
    """The Redis set of a client's jobs that may still be waiting for a worker."""
    return f"pysandbox:client-jobs:{client}"


class Fault(str, Enum):
    """How a job failed through no fault of its script."""

    CANCELED = "canceled"
    """Its client canceled it before a worker started it."""
    WORKER_LOST = "worker_lost"
    """Its worker died mid-run, or lost Redis before it could store the result: it is reported
    failed, never silently re-run."""
    SANDBOX_FAILED = "sandbox_failed"
    """The sandbox failed to run it (logged)."""
    SESSION_ENDED = "session_ended"
    """A session's queued call whose session ended before its turn (JobState.session_ended says why)."""


Ended = Outcome | Fault
"""How a job ended: the run's Outcome (ok or the script's fault, or canceled while it ran), or a Fault."""


@dataclass(frozen=True)
class JobState:
    """A job as its client sees it."""

    id: str
    status: str
    """queued, running, finished, failed or canceled."""
    request_id: str | None
    ended: Ended | None = None
    """None while it has not ended."""
    callback: dict[str, Any] | None = None
    """Its callback's state (shared/callbacks.py), when it has one."""
    worker: str | None = None
    """The name of the worker that took it (worker/__main__.py's worker_name); None while queued,
    and for a session's call (it runs wherever its session lives)."""
    session: dict[str, Any] | None = None
    """A session's call: its session's state once the call ended."""
    session_ended: str | None = None
    """A session's call failed `session_ended`: why the session ended."""


@dataclass(frozen=True)
class SessionCall:
    """A queued call of a session (shared/session_calls.py): its id, and the Redis key that exists
    while the process holding the session lives."""

    session_id: str
    holder_key: str


class QueueError(Exception):
    """The queue refused a request, or failed."""


class QueueUnavailable(QueueError):
    """Redis cannot be reached (or none is configured); the message says why."""


def unreachable(exc: Exception) -> QueueUnavailable:
    """The queue could not be reached: exc says how."""
    return QueueUnavailable(f"the queue cannot be reached ({type(exc).__name__})")


class QueueFull(QueueError):
    """The queue, or this client's share of it, is full; the message says which."""


class NoWorkerFree(QueueError):
    """No worker took a sync run within the wait for one: it was canceled, never to run."""


@dataclass
class OverBudget(QueueError):
    """The job would take the client's (client_full) or everyone's storage over budget."""

    refusal: Refusal
    need: int
    budget: "Budget"


class JobNotFound(QueueError):
    """No such job of this client's: unknown, malformed, expired or another client's id."""


class JobFinished(QueueError):
    """A job that already ended cannot be canceled."""


class JobFailed(QueueError):
    """A sync run through the queue ended in a failure (its `ended`)."""

    def __init__(self, ended: Ended) -> None:
        super().__init__(ended)
        self.ended = ended


class JobOverran(QueueError):
    """A sync run through the queue did not end within its limits and the backstop (logged)."""


@dataclass(frozen=True)
class Budget:
    """The storage budget: bytes the jobs of one client, and of all clients, may hold in Redis."""

    total_bytes: int
    client_bytes: int


def reaching_redis(method: Callable[P, R]) -> Callable[P, R]:
    """A method that talks to Redis (JobQueue's, api/sessions.py's QueueSessions'), whose
    RedisError becomes QueueUnavailable (503 queue_unavailable)."""
    @functools.wraps(method)
    def reaching(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except RedisError as exc:
            raise unreachable(exc) from None
    return reaching


class JobQueue:
    """The API's side of the queue."""

    def __init__(self, redis_url: str, max_queued: int, max_queued_per_client: int, result_ttl_s: int,
                 budget: Budget) -> None:
        self.redis = Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=5)
        self.queue = Queue(QUEUE_NAME, connection=self.redis)
        self.ledger, self.budget = Ledger(self.redis), budget
        self.max_queued, self.max_queued_per_client = max_queued, max_queued_per_client
        self.result_ttl_s = result_ttl_s

    @reaching_redis
    def submit(self, script: str, limits: Limits, inputs: RunInput | None, request_id: str,
               client: str, callback_url: str | None = None, session: SessionCall | None = None) -> Job:
        """Enqueue one run of client's, which keeps its request's id; QueueFull when the queue is
        full, or when this client already has its share of it waiting; OverBudget when it would
        take the client's or everyone's storage over budget. Its input goes to a key of its own,
        which the worker deletes; the job carries only its id. A session's call (`session`) is
        not put on the queue's list: its session's holder runs it (shared/session_calls.py)."""
        payload = pickle.dumps((script, limits, inputs), protocol=pickle.HIGHEST_PROTOCOL)
        need = allocated(len(payload)) + worst_result_bytes(limits) + JOB_OVERHEAD_BYTES
        job_id = str(uuid.uuid4())
        if session is None and self.queue.count >= self.max_queued:
            raise QueueFull(f"the queue holds {self.max_queued} jobs")
        waiting = self._waiting_of(client)
        if waiting >= self.max_queued_per_client:
            raise QueueFull(f"this client has {waiting} jobs waiting in the queue, its share of it")
        refusal = self.ledger.reserve(job_id, client, need, self.budget.client_bytes,
                                      self.budget.total_bytes)
        if refusal is not None:
            raise OverBudget(refusal, need, self.budget)
        if callback_url is not None:  # before the job exists: its worker may end it at once
            callbacks.register(self.redis, job_id, callback_url, self.result_ttl_s)
        return self._enqueue(job_id, payload, limits, request_id, client, session)

    def ended(self, state: JobState, body: dict[str, Any]) -> None:
        """A job this API saw end (a cancel of a job no worker had taken): its callback is due.
        A worker that ended it first has made it due already; this then changes nothing."""
        if state.callback is not None and state.ended is not None:
            try:
                callbacks.ended(self.redis, state.id, body)
            except RedisError as exc:
                raise unreachable(exc) from None

    def _enqueue(self, job_id: str, payload: bytes, limits: Limits, request_id: str,
                 client: str, session: SessionCall | None) -> Job:
        """Store the payload and enqueue the job in one transaction; on failure, release the
        job's reservation (or, if Redis is gone, the ledger does once it sees no such job).
        A session's call is only recorded, queued, for its session's holder to run."""
        meta: dict[str, Any] = {"request_id": request_id, "client": client}
        timeout_s = int(limits.timeout_s) + RQ_BACKSTOP_S + ADMIT_WAIT_S
        ttls: dict[str, Any] = {"result_ttl": self.result_ttl_s, "failure_ttl": self.result_ttl_s,
                                "ttl": None}
        try:
            with self.redis.pipeline() as pipe:
                if session is None:
                    job = self.queue.enqueue(JOB_FUNCTION, job_id=job_id, job_timeout=timeout_s, meta=meta,
                                             pipeline=pipe, **ttls)
                else:
                    meta.update({SESSION: session.session_id, HOLDER_KEY: session.holder_key})
                    job = Job.create(JOB_FUNCTION, id=job_id, connection=self.redis, origin=QUEUE_NAME,
                                     status=JobStatus.QUEUED, timeout=timeout_s, meta=meta, **ttls)
                    job.enqueued_at = now()
                    job.save(pipeline=pipe)
                pipe.set(payload_key(job_id), payload)
                pipe.sadd(client_jobs_key(client), job_id)
                pipe.expire(client_jobs_key(client), self.result_ttl_s)
                pipe.execute()
            return job
        except RedisError:
            try:
                self.ledger.release(job_id)
            except RedisError:
                pass
            raise

    def _waiting_of(self, client: str) -> int:
        """How many of client's jobs wait for a worker. The count lives in Redis, so it holds
        across API restarts and replicas: a set of the client's job ids, from which the jobs a
        worker took (or that ended, were canceled or expired) are dropped here, by their status
        in RQ. Two submits of one client at once may both pass at its last place: the cap is
        exceeded by at most the client's concurrent requests, which the rate limits bound."""
        key = client_jobs_key(client)
        ids = [member.decode() for member in self.redis.smembers(key)]  # type: ignore[union-attr]
        if not ids:
            return 0
        pipe = self.redis.pipeline()
        for job_id in ids:
            pipe.hget(Job.key_for(job_id), "status")
        statuses = pipe.execute()
        gone = [job_id for job_id, status in zip(ids, statuses, strict=True)
                if status is None or status.decode() not in WAITING_NAMES]
        if gone:
            self.redis.srem(key, *gone)
        return len(ids) - len(gone)

    @reaching_redis
    def wait(self, job: Job, queue_wait_s: float, run_s: float) -> Outcome:
        """Block until the job ends; its Outcome if main() returned, else JobFailed.

        A job no worker has taken within queue_wait_s is cancelled (NoWorkerFree), as a local run
        that finds no free slot is refused: its client will not expect it to run."""
        taken_by = time.monotonic() + queue_wait_s
        while job.get_status() in WAITING:
            if time.monotonic() >= taken_by:
                job.cancel()
                self._drop_input(job)
                raise NoWorkerFree("every worker is busy")
            time.sleep(0.005)
        ends_by = time.monotonic() + run_s
        while time.monotonic() < ends_by:
            job.latest_result(timeout=1)
            status, ended = self._resolve(job)
            if status == "finished" and isinstance(ended, Outcome):
                return ended
            if ended is not None:
                raise JobFailed(ended)
        log.error("job %s outlived its limits by %d s", job.id, RQ_BACKSTOP_S)
        raise JobOverran(job.id)

    @reaching_redis
    def state(self, job_id: str, client: str) -> JobState:
        """client's job: its status, and how it ended once it has."""
        return self._describe(self._fetch(job_id, client))

    @reaching_redis
    def cancel(self, job_id: str, client: str) -> JobState:
        """Cancel client's queued or running job and answer its state (canceled, once its worker
        has killed the jail); a canceled job's state again; JobFinished for one that ended."""
        job = self._fetch(job_id, client)
        status, _ = self._resolve(job)
        if status == "canceled":
            return self._describe(job)
        if status not in ("queued", "running"):
            raise JobFinished(job.id)
        try:
            request_cancel(self.redis, job.id, self.result_ttl_s)
            if job.get_status() in WAITING:
                job.cancel()  # never runs; a worker that took it meanwhile sees the cancel key
                self._drop_input(job)
        except InvalidJobOperation:
            pass  # taken or ended meanwhile: the worker honours the key, or it had finished
        ends_by = time.monotonic() + CANCEL_WAIT_S
        while (status := self._resolve(job)[0]) == "running" and time.monotonic() < ends_by:
            time.sleep(0.05)
        if status in ("finished", "failed"):
            raise JobFinished(job.id)  # it ended before its worker saw the cancel
        return self._describe(job)

    def _drop_input(self, job: Job) -> None:
        """A job canceled before it ran: its input leaves Redis now, its record with the
        result TTL (RQ keeps canceled jobs forever), and its storage comes down to the record,
        unless a worker took the input meanwhile (it settles the job itself)."""
        with self.redis.pipeline() as pipe:
            pipe.delete(payload_key(job.id))
            pipe.expire(job.key, self.result_ttl_s)
            dropped, _ = pipe.execute()
        if dropped:
            self.ledger.settle(job.id, JOB_OVERHEAD_BYTES, done=True)

    def _fetch(self, job_id: str, client: str) -> Job:
        """client's job; JobNotFound for an id that is malformed, unknown, expired or
        another client's, all alike. The owner is in the job's meta, which the one read of the
        job's hash brings: a foreign job costs the same round trip as an unknown one. A job
        queued before owners were recorded has none and is nobody's (see docs/api.md)."""
        if not JOB_ID.fullmatch(job_id):
            raise JobNotFound(job_id)
        try:
            job = Job.fetch(job_id, connection=self.redis)
        except NoSuchJobError:
            raise JobNotFound(job_id) from None
        if job.meta.get("client") != client:
            raise JobNotFound(job_id)
        return job

    def _describe(self, job: Job) -> JobState:
        status, ended = self._resolve(job)
        worker = None
        if HOLDER_KEY not in job.meta:  # a session's call runs where its session lives: no worker
            worker = job.worker_name
            if worker is None and status != "queued":  # a worker took it after it was fetched
                worker = (self.redis.hget(job.key, "worker_name") or b"").decode() or None  # type: ignore[union-attr]
        session = job.meta.get(SESSION)
        return JobState(job.id, status, job.meta.get("request_id"), ended,
                        callbacks.state(self.redis, job.id), worker=worker,
                        session=session if isinstance(session, dict) else None,
                        session_ended=job.meta.get(ENDED))

    def _resolve(self, job: Job) -> tuple[str, Ended | None]:
        """The job's public status, and how it ended (None while it has not)."""
        status = job.get_status()
        if SESSION in job.meta and status not in WAITING and status is not JobStatus.STARTED:
            job.get_meta()  # written with the status just read: newer than the fetched meta
        if status is JobStatus.CANCELED:
            return "canceled", Fault.CANCELED
        if ENDED in job.meta:
            return "failed", Fault.SESSION_ENDED
        if (status in WAITING or status is JobStatus.STARTED) and HOLDER_KEY in job.meta \
                and not self.redis.exists(job.meta[HOLDER_KEY]):
            fail_ended(job, "lost", self.result_ttl_s)  # its session's holder is gone
            return "failed", Fault.SESSION_ENDED
        if status in WAITING:
            return "queued", None
        if status is JobStatus.STARTED:
            return ("running", None) if self._running(job) else ("failed", Fault.WORKER_LOST)
        value = job.return_value() if status is JobStatus.FINISHED else None
        if isinstance(value, dict):
            outcome = Outcome.from_dict(value)
            if outcome.status is Status.CANCELED:
                return "canceled", outcome
            return ("finished" if outcome.ok else "failed"), outcome
        if failed_lost(job.exc_info):
            return "failed", Fault.WORKER_LOST
        log.error("job %s failed in the worker: %s", job.id, job.exc_info)
        return "failed", Fault.SANDBOX_FAILED

    def _running(self, job: Job) -> bool:
        """A started job is running until its worker is lost (shared/queue.py's is_lost, the rule
        its callback is made due by too)."""
        return not is_lost(self.redis, job)

    def persistent(self) -> bool:
        """True when Redis writes an append-only file (jobs outlive a Redis restart)."""
        return bool(self.redis.info("persistence").get("aof_enabled"))

    def reachable(self) -> bool:
        """Whether Redis answers a PING now (readiness of an API that only enqueues)."""
        try:
            return bool(self.redis.ping())
        except RedisError:
            return False

    def health(self) -> dict[str, Any]:
        """Whether Redis answers, keeps its data across restarts, and how many workers serve."""
        try:
            return {"redis": "ok", "persistent": self.persistent(),
                    "workers": Worker.count(queue=self.queue), "queued": self.queue.count,
                    "storage": {"held_bytes": self.ledger.held()[0],
                                "budget_bytes": self.budget.total_bytes}}
        except RedisError as exc:
            return {"redis": f"unreachable ({type(exc).__name__})", "workers": 0}

    def oldest_queued_s(self) -> float:
        """How long the job at the head of the queue has waited (the oldest: jobs are appended,
        workers take the head); 0 when none waits. fetch_job drops the id of a job whose record
        has gone, and the next one is looked at."""
        for job_id in self.queue.get_job_ids(0, 9):
            job = self.queue.fetch_job(job_id)
            if job is not None and job.enqueued_at is not None:
                enqueued = job.enqueued_at
                if enqueued.tzinfo is None:
                    enqueued = enqueued.replace(tzinfo=UTC)
                return max(0.0, (datetime.now(UTC) - enqueued).total_seconds())
        return 0.0

    def metrics_state(self) -> dict[str, Any]:
        """For /metrics: whether Redis answers, persists, its workers and jobs by RQ state."""
        queue = self.queue
        try:
            registries = {"started": queue.started_job_registry, "finished": queue.finished_job_registry,
                          "failed": queue.failed_job_registry, "canceled": queue.canceled_job_registry,
                          "deferred": queue.deferred_job_registry,
                          "scheduled": queue.scheduled_job_registry}
            jobs = {"queued": queue.count, **{name: registry.get_job_count(cleanup=False)
                                              for name, registry in registries.items()}}
            held, by_client = self.ledger.held()
            return {"up": 1, "persistent": self.persistent(), "workers": Worker.count(queue=queue),
                    "jobs": jobs, "oldest_queued_s": self.oldest_queued_s(), "storage_held": held,
                    "storage_by_client": by_client, "storage_budget": self.budget.total_bytes}
        except RedisError:
            return {"up": 0}
