"""A session's calls in the order they were accepted, and its queued calls as RQ jobs: shared by
the two holders of sessions, the API process (api/sessions.py, one container) and the worker
(worker/sessions.py, queue mode).

Each session has a CallLine: its calls, sync and `?async=1`, run one at a time in the order they
were accepted, by a thread of the session's own. A sync call is accepted only when the line is
empty (else 409 session_busy at once: a waiting request would hold a gunicorn thread for as long
as the calls ahead run).

A queued call is an RQ job like a queued run (api/job_queue.py submits it, with its input at
storage.payload_key and its client's caps and storage budget), which no RQ worker takes: it is
not pushed on the queue's list, and its session's holder runs it in the session's line
(run_queued_call), writing the job's record as an RQ worker would (started, then its result), so
that GET/DELETE /jobs/<id> and callbacks treat it as any job. A session that ended before the
call's turn fails the job `session_ended` (fail_ended). While a call runs, the job's cancel key
interrupts it (SIGINT: KeyboardInterrupt in the call's code, as a timeout does); the session
keeps its state and the job ends `canceled`.
"""
import logging
import os
import pickle
import signal
import socket
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar

from redis import Redis
from redis.exceptions import RedisError
from rq.job import Job, JobStatus
from rq.results import Result
from rq.utils import now

from jail import Limits, Outcome, RunInput, Status
from jail.session import Session
from shared import callbacks
from shared.answers import ended_job, session_ended_job
from shared.queue import keep_alive, wait_for
from shared.storage import JOB_OVERHEAD_BYTES, Ledger, payload_key, stored_result_bytes, worst_result_bytes

log = logging.getLogger(__name__)
T = TypeVar("T")
NOT_RUN = "the job was canceled before it ran"
CANCELED_CALL = "the call was canceled by its client (KeyboardInterrupt); the session keeps its state"
SESSION = "session"
"""The job's meta: its session's id, then (once it ended) its session's state."""
ENDED = "session_ended"
"""The job's meta: why its session had ended before the call ran."""

Call = Callable[[str, Limits, RunInput | None, threading.Event], tuple[Outcome | None, dict[str, Any] | None]]
"""Runs one call in the session (the job's canceled event interrupts it): its Outcome, or None when
the session had ended (or ended without an outcome); and the session's state afterwards (None if
its holder no longer knows it: `lost`)."""


def holder_key(name: str) -> str:
    """The key that says the API process `name` holds sessions now (a worker's is
    shared/session_queue.py's worker_key)."""
    return f"pysandbox:session-holder:{name}"


class LineClosed(Exception):
    """The session ended: its line takes no more calls."""


class LineBusy(Exception):
    """A call of the session runs or waits: a call that must run alone cannot."""


class CallLine:
    """A session's calls, run one at a time in the order they were accepted (a single-thread
    executor: its queue is first in, first out)."""

    def __init__(self, session_id: str) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"session-{session_id[:8]}")
        self._pending = 0
        self._closed = False
        self._lock = threading.Lock()
        self._turn = threading.Lock()
        """Held by the call running now, in the line's thread or in run_alone's caller's."""

    @property
    def idle(self) -> bool:
        """True when no call runs or waits."""
        return self._pending == 0

    def submit(self, work: Callable[[], Any], alone: bool) -> Future | None:
        """Queue work behind the calls accepted before; None (nothing queued) if `alone` and a call
        runs or waits; LineClosed once the session ended."""
        with self._lock:
            if alone and self._pending:
                return None
            try:
                future = self._executor.submit(self._run, work)
            except RuntimeError:
                raise LineClosed from None
            self._pending += 1
        return future

    def run_alone(self, work: Callable[[], T]) -> T:
        """Run work now, in the caller's thread, if no call runs or waits (else LineBusy;
        LineClosed once the session ended); calls accepted meanwhile wait for it. A sync call so
        skips the hand-off to the line's thread and back, which cost ~0.7 ms a call here."""
        with self._lock:
            if self._closed:
                raise LineClosed
            if self._pending:
                raise LineBusy
            self._pending += 1
            self._turn.acquire()  # free: with nothing pending, no call holds it
        try:
            return work()
        finally:
            self._turn.release()
            with self._lock:
                self._pending -= 1

    def _run(self, work: Callable[[], Any]) -> Any:
        try:
            with self._turn:
                return work()
        finally:
            with self._lock:
                self._pending -= 1

    def close(self) -> None:
        """Take no more calls; those queued still run (and find the session ended)."""
        with self._lock:
            self._closed = True
            self._executor.shutdown(wait=False)


def interruptible(session: Session, script: str, limits: Limits, inputs: RunInput | None,
                  canceled: threading.Event | None) -> Outcome:
    """session.execute, interrupted (SIGINT, as a timeout interrupts it) once `canceled` is set: the
    call is then `canceled`, and the session keeps its state. A call that ignores the interrupt runs
    on until its own timeout. (SIGINT between two calls does nothing: jail/session_harness.py.)"""
    if canceled is None:
        return session.execute(script, limits, inputs)
    done = threading.Event()

    def interrupt() -> None:
        while not done.is_set():
            if canceled.wait(0.05) and not done.is_set():
                try:
                    os.kill(session.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass
                return

    watcher = threading.Thread(target=interrupt, name="session-cancel", daemon=True)
    watcher.start()
    try:
        outcome = session.execute(script, limits, inputs)
    finally:
        done.set()
        watcher.join()
    if canceled.is_set() and outcome.status is Status.TIMEOUT:
        return replace(outcome, status=Status.CANCELED, message=CANCELED_CALL, traceback=None)
    return outcome


def run_queued_call(redis: Redis, job_id: str, call: Call, result_ttl_s: int) -> None:
    """Run the queued call job_id in its session (this runs in the session's line) and write its
    record: its input read and deleted, `started`, then its outcome (or `session_ended`); its
    storage settled and its callback made due as worker/jobs.py's run_stored does."""
    try:
        job = Job.fetch(job_id, connection=redis)
        raw = redis.getdel(payload_key(job_id))
    except Exception:  # noqa: BLE001 - the line must go on to the next call
        log.exception("a queued session call could not be read", extra={"job_id": job_id})
        return
    if raw is None:  # canceled before its turn: the API settled it
        return
    script, limits, inputs = pickle.loads(raw)  # type: ignore[arg-type]  # noqa: S301 - the API's, over our Redis
    settle(job, worst_result_bytes(limits) + JOB_OVERHEAD_BYTES, done=False)
    try:
        with redis.pipeline() as pipe:
            job.prepare_for_execution(socket.gethostname(), pipeline=pipe)
            pipe.execute()
        outcome: Outcome | None
        state: dict[str, Any] | None = None
        with keep_alive(redis, job_id) as canceled:
            if canceled.is_set():
                outcome = Outcome(Status.CANCELED, message=NOT_RUN)
            else:
                outcome, state = call(script, limits, inputs, canceled)
        if outcome is None:
            fail_ended(job, (state or {}).get("reason") or "lost", result_ttl_s, state)
            return
        finish(job, outcome, state, result_ttl_s)
    except RedisError:
        log.warning("a queued session call's record not written: Redis is away", extra={"job_id": job_id})


def finish(job: Job, outcome: Outcome, state: dict[str, Any] | None, ttl_s: int) -> None:
    """Write a session call's outcome as RQ writes a finished job's (the session's state in its
    meta), settle its storage and make its callback due."""
    value = outcome.to_dict()
    if state is not None:
        job.meta[SESSION] = state
    job.ended_at = now()
    with job.connection.pipeline() as pipe:
        job.set_status(JobStatus.FINISHED, pipeline=pipe)
        job.save(pipeline=pipe)
        Result.create(job, Result.Type.SUCCESSFUL, ttl=ttl_s, return_value=value, pipeline=pipe)
        job.finished_job_registry.add(job, ttl_s, pipe)
        job.cleanup(ttl_s, pipeline=pipe, remove_from_queue=False)
        pipe.execute()
    settle(job, stored_result_bytes(value) + JOB_OVERHEAD_BYTES)
    body = ended_job(job.id, job.meta.get("request_id"), outcome)
    call_back(job, body if state is None else {**body, SESSION: state})


def fail_ended(job: Job, reason: str, ttl_s: int, state: dict[str, Any] | None = None) -> None:
    """Fail a queued call whose session ended before its turn (`reason`), its input dropped."""
    job.meta[ENDED] = reason
    if state is not None:
        job.meta[SESSION] = state
    job.ended_at = now()
    with job.connection.pipeline() as pipe:
        pipe.delete(payload_key(job.id))
        job.set_status(JobStatus.FAILED, pipeline=pipe)
        job.save(pipeline=pipe)
        job.failed_job_registry.add(job, ttl=ttl_s, pipeline=pipe, exc_string=f"session_ended: {reason}")
        job.cleanup(ttl_s, pipeline=pipe, remove_from_queue=False)
        pipe.execute()
    settle(job, JOB_OVERHEAD_BYTES)
    call_back(job, session_ended_job(job.id, job.meta.get("request_id"), reason, state))


def settle(job: Job, nbytes: int, done: bool = True) -> None:
    """Settle the job's storage (shared/storage.py); if Redis is away, the ledger keeps the larger
    reservation (the safe side) until the job's record expires."""
    try:
        Ledger(job.connection).settle(job.id, nbytes, done)
    except RedisError:
        log.warning("job's storage not settled: Redis is away", extra={"job_id": job.id})


def call_back(job: Job, body: dict[str, Any]) -> None:
    """The job has ended as `body` says (GET /jobs/<id>'s JSON): its callback, if any, is due
    (shared/callbacks.py; a worker's delivery loop sends it). With Redis away, a thread makes it
    due once Redis answers, as the worker stores the job's outcome then (worker/__main__.py)."""
    try:
        callbacks.ended(job.connection, job.id, body)
    except RedisError:
        log.warning("job's callback not made due yet: Redis is away", extra={"job_id": job.id})
        threading.Thread(target=_call_back_later, args=(job, body), name=f"callback-{job.id}",
                         daemon=True).start()


def _call_back_later(job: Job, body: dict[str, Any]) -> None:
    """call_back's retry, each time Redis answers again (shared/queue.py's wait_for)."""
    while True:
        wait_for(job.connection)
        try:
            callbacks.ended(job.connection, job.id, body)
            return
        except RedisError:
            pass
