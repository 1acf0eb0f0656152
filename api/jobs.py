"""Queued runs on RQ/Redis: enqueue a script, report a job's state by id."""
import logging
import pickle
import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Worker
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus

from api.errors import ApiError, busy
from api.responses import outcome_body, outcome_error
from jail import Limits, Outcome, RunInput, Status
from jail.admission import ADMIT_WAIT_S
from worker.queue import ALIVE_TTL_S, JOB_FUNCTION, QUEUE_NAME, is_alive, request_cancel
from worker.storage import JOB_OVERHEAD_BYTES, Ledger, Refusal, allocated, payload_key, \
    worst_result_bytes

JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
"""A job id as RQ makes it (a uuid4); checked with fullmatch, so no trailing newline passes."""
RQ_BACKSTOP_S = 30
"""RQ's own job timeout is the jail's wall limit plus this: a backstop, never the limit."""
WAITING = {JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED, JobStatus.CREATED}
WAITING_NAMES = {status.value for status in WAITING}
CANCEL_WAIT_S = 3.0
"""How long DELETE waits for a running job's worker to confirm it killed the jail."""
log = logging.getLogger(__name__)


def client_jobs_key(client: str) -> str:
    """The Redis set of a client's jobs that may still be waiting for a worker."""
    return f"pysandbox:client-jobs:{client}"


def worker_lost() -> ApiError:
    """A job whose worker died mid-run, or lost Redis before it could store the result: it is
    reported failed, never silently re-run."""
    return ApiError(500, "worker_lost", "the worker running this job died, or lost the queue, before "
                    "it finished; it was not re-run (submit it again)")


def not_found() -> ApiError:
    """404 job_not_found."""
    return ApiError(404, "job_not_found", "no such job, or its result has expired")


def canceled() -> ApiError:
    """The error of a job its client canceled (DELETE /jobs/<id>): only ever inside a job's
    state, never raised, so its status is not an answer's."""
    return ApiError(409, "canceled", "the job was canceled by its client")


def finished() -> ApiError:
    """409 job_finished: a job that already ended cannot be canceled."""
    return ApiError(409, "job_finished",
                    "the job has already ended; only queued or running jobs can be canceled")


def unavailable(reason: str) -> ApiError:
    """503 queue_unavailable."""
    return ApiError(503, "queue_unavailable", reason, headers={"Retry-After": "5"})


@dataclass(frozen=True)
class Budget:
    """The storage budget: bytes the jobs of one client, and of all clients, may hold in Redis."""

    total_bytes: int
    client_bytes: int


def over_budget(refusal: Refusal, need: int, budget: Budget, retry_after_s: int) -> ApiError:
    """503 storage_budget_exceeded (this client's budget) or storage_full (everyone's). Room
    comes back as running jobs end (their worst case becomes what they stored) and as results
    expire. 503 as `busy` is for the client's share of the queue: 429 means a rate limit, with
    its X-RateLimit-* headers."""
    headers = {"Retry-After": str(retry_after_s)}
    reserve = (f"this job reserves {need} bytes (its input and the largest result its limits "
               "allow, until it ends)")
    if refusal.client_full:
        return ApiError(503, "storage_budget_exceeded", (
            f"this client's jobs hold {refusal.client_held} bytes of its {budget.client_bytes}-byte "
            f"storage budget in the queue and {reserve}; retry once some of its jobs have ended "
            "or their results have expired"), headers=headers)
    return ApiError(503, "storage_full", (
        f"the queue's storage holds {refusal.total_held} bytes of its {budget.total_bytes} and "
        f"{reserve}; retry shortly"), headers=headers)


class JobQueue:
    """The API's side of the queue."""

    def __init__(self, redis_url: str, max_queued: int, max_queued_per_client: int, result_ttl_s: int,
                 retry_after_s: int, budget: Budget) -> None:
        self.redis = Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=5)
        self.queue = Queue(QUEUE_NAME, connection=self.redis)
        self.ledger, self.budget = Ledger(self.redis), budget
        self.max_queued, self.max_queued_per_client = max_queued, max_queued_per_client
        self.result_ttl_s, self.retry_after_s = result_ttl_s, retry_after_s

    def submit(self, script: str, limits: Limits, inputs: RunInput | None, request_id: str,
               client: str) -> Job:
        """Enqueue one run of client's, which keeps its request's id; 503 busy when the queue is
        full, or when this client already has its share of it waiting; 503 over_budget() when
        it would take the client's or everyone's storage over budget. Its input goes to a key of
        its own, which the worker deletes; the job carries only its id."""
        payload = pickle.dumps((script, limits, inputs), protocol=pickle.HIGHEST_PROTOCOL)
        need = allocated(len(payload)) + worst_result_bytes(limits) + JOB_OVERHEAD_BYTES
        job_id = str(uuid.uuid4())
        try:
            if self.queue.count >= self.max_queued:
                raise busy(f"the queue holds {self.max_queued} jobs", self.retry_after_s)
            waiting = self._waiting_of(client)
            if waiting >= self.max_queued_per_client:
                raise busy(f"this client has {waiting} jobs waiting in the queue, its share of it",
                           self.retry_after_s)
            refusal = self.ledger.reserve(job_id, client, need, self.budget.client_bytes,
                                          self.budget.total_bytes)
            if refusal is not None:
                raise over_budget(refusal, need, self.budget, self.retry_after_s)
            return self._enqueue(job_id, payload, limits, request_id, client)
        except RedisError as exc:
            raise unavailable(f"the queue cannot be reached ({type(exc).__name__})") from None

    def _enqueue(self, job_id: str, payload: bytes, limits: Limits, request_id: str,
                 client: str) -> Job:
        """Store the payload and enqueue the job in one transaction; on failure, release the
        job's reservation (or, if Redis is gone, the ledger does once it sees no such job)."""
        try:
            with self.redis.pipeline() as pipe:
                job = self.queue.enqueue(
                    JOB_FUNCTION, job_id=job_id,
                    job_timeout=int(limits.timeout_s) + RQ_BACKSTOP_S + ADMIT_WAIT_S,
                    result_ttl=self.result_ttl_s, failure_ttl=self.result_ttl_s, ttl=None,
                    meta={"request_id": request_id, "client": client}, pipeline=pipe)
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

    def wait(self, job: Job, queue_wait_s: float, run_s: float) -> dict[str, Any]:
        """Block until the job ends; the sync answer's 200 body, or its error raised.

        A job no worker has taken within queue_wait_s is cancelled and answered 503 busy,
        as a local run that finds no free slot is: its client will not expect it to run."""
        try:
            taken_by = time.monotonic() + queue_wait_s
            while job.get_status() in WAITING:
                if time.monotonic() >= taken_by:
                    job.cancel()
                    self._drop_input(job)
                    raise busy("every worker is busy", self.retry_after_s)
                time.sleep(0.005)
            ends_by = time.monotonic() + run_s
            while time.monotonic() < ends_by:
                job.latest_result(timeout=1)
                status, detail = self._resolve(job)
                if isinstance(detail, ApiError):
                    raise detail
                if status == "finished":
                    return detail
        except RedisError as exc:
            raise unavailable(f"the queue cannot be reached ({type(exc).__name__})") from None
        log.error("job %s outlived its limits by %d s", job.id, RQ_BACKSTOP_S)
        raise ApiError(500, "internal_error", "the run did not end in time; the error was logged")

    def state(self, job_id: str, client: str) -> dict[str, Any]:
        """{"id", "status", "request_id", ...} for client's job: its result or its error once it
        has ended."""
        return self._describe(self._fetch(job_id, client))

    def cancel(self, job_id: str, client: str) -> dict[str, Any]:
        """Cancel client's queued or running job and answer its state (canceled, once its worker
        has killed the jail); a canceled job's state again; 409 job_finished for one that ended."""
        job = self._fetch(job_id, client)
        status, _ = self._resolve(job)
        if status == "canceled":
            return self._describe(job)
        if status not in ("queued", "running"):
            raise finished()
        try:
            request_cancel(self.redis, job.id, self.result_ttl_s)
            if job.get_status() in WAITING:
                job.cancel()  # never runs; a worker that took it meanwhile sees the cancel key
                self._drop_input(job)
        except RedisError as exc:
            raise unavailable(f"the queue cannot be reached ({type(exc).__name__})") from None
        except InvalidJobOperation:
            pass  # taken or ended meanwhile: the worker honours the key, or it had finished
        ends_by = time.monotonic() + CANCEL_WAIT_S
        while (status := self._resolve(job)[0]) == "running" and time.monotonic() < ends_by:
            time.sleep(0.05)
        if status in ("finished", "failed"):
            raise finished()  # it ended before its worker saw the cancel
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
        """client's job; 404 job_not_found for an id that is malformed, unknown, expired or
        another client's, all alike. The owner is in the job's meta, which the one read of the
        job's hash brings: a foreign job costs the same round trip as an unknown one. A job
        queued before owners were recorded has none and is nobody's (see the README)."""
        if not JOB_ID.fullmatch(job_id):
            raise not_found()
        try:
            job = Job.fetch(job_id, connection=self.redis)
        except NoSuchJobError:
            raise not_found() from None
        except RedisError as exc:
            raise unavailable(f"the queue cannot be reached ({type(exc).__name__})") from None
        if job.meta.get("client") != client:
            raise not_found()
        return job

    def _describe(self, job: Job) -> dict[str, Any]:
        status, detail = self._resolve(job)
        head = {"id": job.id, "status": status, "request_id": job.meta.get("request_id")}
        return {**head, **(detail.to_dict() if isinstance(detail, ApiError) else detail)}

    def _resolve(self, job: Job) -> tuple[str, dict[str, Any] | ApiError]:
        """The job's public status with its 200 body, or with the error it ended in."""
        try:
            status = job.get_status()
            if status is JobStatus.CANCELED:
                return "canceled", canceled()
            if status in WAITING:
                return "queued", {}
            if status is JobStatus.STARTED:
                return ("running", {}) if self._running(job) else ("failed", worker_lost())
            value = job.return_value() if status is JobStatus.FINISHED else None
            if isinstance(value, dict):
                outcome = Outcome.from_dict(value)
                if outcome.status is Status.CANCELED:
                    return "canceled", outcome_error(outcome)
                return ("finished", outcome_body(outcome)) if outcome.ok else (
                    "failed", outcome_error(outcome))
        except RedisError as exc:
            raise unavailable(f"the queue cannot be reached ({type(exc).__name__})") from None
        # Abandoned: its worker died. A Redis error: the worker lost Redis (a restart, a
        # failover) while storing the outcome, and RQ recorded that once Redis was back.
        if any(mark in (job.exc_info or "") for mark in ("AbandonedJobError", "redis.exceptions.")):
            return "failed", worker_lost()
        log.error("job %s failed in the worker: %s", job.id, job.exc_info)
        return "failed", ApiError(500, "internal_error",
                                  "the sandbox failed to run this job; the error was logged")

    def _running(self, job: Job) -> bool:
        """A started job is running while its worker keeps its liveness key (or just began)."""
        started = job.started_at
        if started is None:
            return True
        if started.tzinfo is None:
            started = started.replace(tzinfo=UTC)
        age_s = (datetime.now(UTC) - started).total_seconds()
        return age_s < ALIVE_TTL_S or is_alive(self.redis, job.id)

    def persistent(self) -> bool:
        """True when Redis writes an append-only file (jobs outlive a Redis restart)."""
        return bool(self.redis.info("persistence").get("aof_enabled"))

    def health(self) -> dict[str, Any]:
        """Whether Redis answers, keeps its data across restarts, and how many workers serve."""
        try:
            return {"redis": "ok", "persistent": self.persistent(),
                    "workers": Worker.count(queue=self.queue), "queued": self.queue.count,
                    "storage": {"held_bytes": self.ledger.held()[0],
                                "budget_bytes": self.budget.total_bytes}}
        except RedisError as exc:
            return {"redis": f"unreachable ({type(exc).__name__})", "workers": 0}

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
                    "jobs": jobs, "storage_held": held, "storage_by_client": by_client,
                    "storage_budget": self.budget.total_bytes}
        except RedisError:
            return {"up": 0}
