"""Sessions over HTTP: POST /sessions, POST /sessions/<id>/execute, GET and DELETE /sessions/<id>.

Where this process runs jails, Sessions holds them; in queue mode (PYSANDBOX_EXECUTE_VIA_QUEUE)
QueueSessions routes them to the workers that hold them (worker/sessions.py).

Each session is a jail of its own (jail/session.py) held by this process (gunicorn runs one
worker: api/gunicorn.conf.py), with its memory limit reserved in the memory ledger runs are
admitted against (jail/admission.py) for as long as it is open. A Sessions registry keeps
them, per client (another client's id is 404, as an unknown one), within caps per client and
in all; a reaper thread ends those idle or past their lifetime. An ended session's record is
kept PYSANDBOX_SESSION_RECORD_TTL_S: it answers 410 session_ended with its reason, then 404.

Calls of one session run one at a time, in the order they were accepted (shared/session_calls.py's
CallLine): `?async=1` queues a call as a job (GET /jobs/<id>) behind those accepted before; a sync
call while another runs or waits is 409 session_busy (no waiting: a call may run for minutes, and
a waiting request would hold a gunicorn thread).
Session calls take no run slot: a session's memory is already reserved, and its CPU is one core
at most (its cgroup, or RLIMIT_CPU over its lifetime).

The routes and MCP's session tools (api/mcp_endpoint.py) go through the same functions
(start_session, call_session, end_session), given the Service and the client: no Flask in them.
"""
import functools
import logging
import os
import socket
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Response, jsonify, request, url_for
from redis import Redis
from redis.exceptions import RedisError
from rq.job import Job

from api.clients import client_id
from api.errors import (
    CATALOG,
    INTERNAL_ERROR,
    MEMORY_UNAVAILABLE,
    SANDBOX_UNAVAILABLE,
    SESSION_BUSY,
    SESSION_ENDED,
    SESSION_NOT_FOUND,
    SESSIONS_FULL,
    SESSIONS_UNAVAILABLE,
    TOO_MANY_SESSIONS,
    ApiError,
    busy,
)
from api.job_queue import JobQueue, SessionCall, reaching_redis
from api.logs import annotate
from api.request_ids import request_id
from api.responses import accepted, outcome_body, outcome_error
from api.run_request import RunRequest, parse_run_request
from api.schemas import SessionRequest, parse_json
from api.service import Service, service
from jail import Limits, Outcome, RunInput, SandboxError
from jail.admission import MemoryLedger
from jail.session import START_TIMEOUT_S, Session, SessionEnded
from shared.logs import run_fields
from shared.metrics import (
    SESSION_CALL_SECONDS,
    SESSION_CALLS,
    SESSIONS_CREATED,
)
from shared.queue import ALIVE_TTL_S
from shared.session_books import MemoryBusy, MemoryNeverFits, SessionBooks, expired
from shared.session_calls import CallLine, LineBusy, LineClosed, holder_key, interruptible, run_queued_call
from shared.session_queue import (
    ANSWER_MARGIN_S,
    NEW_SESSIONS_KEY,
    OPEN_SESSIONS_KEY,
    Request,
    SessionRecord,
    calls_key,
    send,
    session_state,
    wait_answer,
    worker_key,
)
from shared.settings import Settings

log = logging.getLogger(__name__)

REAP_INTERVAL_S = 1.0
"""How often the reaper looks for idle and expired sessions."""
BUSY_MESSAGE = ("the session has a call running or queued; send this one once they have answered (a "
                "queued one's at GET /jobs/<id>), or queue it with ?async=1")



def check_session_caps(settings: Settings, counts: Counter[str], client: str) -> None:
    """429 too_many_sessions when client has its PYSANDBOX_MAX_SESSIONS_PER_CLIENT open, 503
    sessions_full when PYSANDBOX_MAX_SESSIONS are; counts: the open sessions, by client."""
    if counts[client] >= settings.max_sessions_per_client:
        raise TOO_MANY_SESSIONS(f"this client has {settings.max_sessions_per_client} sessions open "
                                "(PYSANDBOX_MAX_SESSIONS_PER_CLIENT); delete one first",
                                retry_after_s=settings.retry_after_s)
    if counts.total() >= settings.max_sessions:
        raise SESSIONS_FULL(f"{settings.max_sessions} sessions are open (PYSANDBOX_MAX_SESSIONS); "
                            "retry later", retry_after_s=settings.retry_after_s)


@dataclass
class Record:
    """One session and what the API knows of it."""

    id: str
    client: str
    session: Session
    idle_timeout_s: float
    max_lifetime_s: float
    token: str | None
    line: CallLine
    """Its calls, in the order they were accepted (shared/session_calls.py)."""
    created_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)
    ended: str | None = None
    ended_at: float | None = None

    def body(self) -> dict[str, Any]:
        """As api/schemas.py's SessionState."""
        usage = self.session.usage()
        return session_state(self.id, self.ended, self.session.limits.memory_mb, self.idle_timeout_s,
                             self.max_lifetime_s, self.created_at, self.last_used,
                             {"calls": usage.calls, "cpu_ms": usage.cpu_ms,
                              "peak_memory_mb": usage.peak_memory_mb})


class Sessions:
    """The sessions of this process, their caps, their memory, their reaper."""

    def __init__(self, settings: Settings, memory: MemoryLedger | None, redis: Redis | None = None) -> None:
        self.settings, self.redis = settings, redis
        self.books = SessionBooks(memory)
        self.holder_key = holder_key(f"api-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        """Refreshed by the reaper while this process holds sessions: their queued calls (in Redis,
        `redis`) fail `session_ended` (`lost`) once it is gone (shared/session_calls.py)."""
        self._records: dict[str, Record] = {}
        self._starting: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._reaper = threading.Thread(target=self._reap_loop, name="session-reaper", daemon=True)
        self._reaper.start()
        self._spare: Session | None = None
        """A session started ahead with the default limits, taken by the next POST /sessions that
        asks for them: its jail and interpreter are up already (milliseconds instead of ~70)."""
        self._want_spare = threading.Event()
        if settings.spare_session:
            self._want_spare.set()
            threading.Thread(target=self._fill_spare, name="session-spare", daemon=True).start()

    def create(self, client: str, body: SessionRequest) -> Record:
        """A new session for client (429/503 past the caps or the memory)."""
        limits, idle_s, lifetime_s = self.settings.session_limits(body.memory_mb, body.idle_timeout_s,
                                                                  body.max_lifetime_s)
        with self._lock:
            check_session_caps(self.settings, Counter(r.client for r in self._records.values()
                                                      if r.ended is None) + self._starting, client)
            token = self._reserve(limits.memory_mb)
            session = self._take_spare(limits)
            self._starting[client] += 1  # counts against the caps while its jail starts
        try:
            session = session or Session(limits, lifetime_s)
        except SandboxError:
            self.books.release(token)
            log.exception("a session's jail did not start")
            raise INTERNAL_ERROR("the sandbox failed to start the session; the error was logged") from None
        finally:
            with self._lock:
                self._starting[client] -= 1
        session_id = str(uuid.uuid4())
        record = Record(session_id, client, session, idle_s, lifetime_s, token, CallLine(session_id))
        with self._lock:
            self._records[record.id] = record
        SESSIONS_CREATED.inc()
        self.books.opened()
        annotate(session_id=record.id)
        return record

    def _take_spare(self, limits: Limits) -> Session | None:
        """The spare session if it has these limits and is alive (under self._lock); a new one
        is started for the next request."""
        spare = self._spare
        if spare is None or spare.limits != limits:
            return None
        self._spare = None
        self._want_spare.set()
        if spare.proc.poll() is not None:
            spare.close("exited")
            return None
        return spare

    def _fill_spare(self) -> None:
        """Keep one spare session with the default limits while sessions are served. Its memory
        is reserved when it is taken; idle, it holds an interpreter's few MB."""
        limits = self.settings.session_limits(None, None, None)[0]
        while self._want_spare.wait() and not self._stopped.is_set():
            try:
                spare = Session(limits, self.settings.max_session_lifetime_s)
            except SandboxError:
                log.exception("a spare session did not start")
                self._stopped.wait(5)
                continue
            with self._lock:
                if self._stopped.is_set():
                    break
                self._spare = spare
                self._want_spare.clear()
        else:
            return
        spare.close("shutdown")

    def _reserve(self, memory_mb: int) -> str | None:
        """The session's memory in the ledger, held while it is open (503 if it cannot fit now)."""
        try:
            return self.books.reserve(memory_mb)
        except MemoryNeverFits as exc:
            raise MEMORY_UNAVAILABLE(str(exc)) from None
        except MemoryBusy as exc:
            raise busy(str(exc), self.settings.retry_after_s) from None

    def find(self, session_id: str, client: str) -> Record:
        """The client's session record (open or ended); 404 for any other id."""
        with self._lock:
            record = self._records.get(session_id)
        if record is None or record.client != client:
            raise SESSION_NOT_FOUND("no such session of this client (or its record has expired)")
        return record

    def open_record(self, session_id: str, client: str) -> Record:
        """As find(), and 410 session_ended if it is over."""
        record = self.find(session_id, client)
        if record.ended is not None:
            raise ended_error(record)
        return record

    def execute(self, record: Record | SessionRecord, script: str, limits: Limits,
                inputs: RunInput | None) -> Outcome:
        """One call in the session, once no other runs or waits (409 busy, 410 ended)."""
        assert isinstance(record, Record), "a record of this process's sessions"
        try:
            outcome = record.line.run_alone(
                functools.partial(self._run, record, script, limits, inputs, None))
        except LineClosed:
            raise ended_error(record) from None
        except LineBusy:
            raise SESSION_BUSY(BUSY_MESSAGE) from None
        except SessionEnded:
            raise ended_error(record) from None
        except SandboxError:
            raise INTERNAL_ERROR("the sandbox failed; the session ended; the error was logged") from None
        annotate(session_id=record.id, **run_fields(outcome))
        return outcome

    def submit(self, record: Record | SessionRecord, asked: RunRequest, jobs: JobQueue,
               request_id: str) -> Job:
        """Queue a call behind the session's others, as a job (shared/session_calls.py)."""
        assert isinstance(record, Record), "a record of this process's sessions"
        self._beat()  # the holder key exists before its first job does
        job = jobs.submit(asked.script, asked.limits, asked.inputs, request_id, record.client,
                          asked.callback_url, SessionCall(record.id, self.holder_key))
        work = functools.partial(run_queued_call, jobs.redis, job.id, functools.partial(self._queued, record),
                                 self.settings.result_ttl_s)
        try:
            record.line.submit(work, alone=False)
        except LineClosed:
            work()  # the session ended meanwhile: the job fails session_ended at once
        return job

    def _queued(self, record: Record, script: str, limits: Limits, inputs: RunInput | None,
                canceled: threading.Event) -> tuple[Outcome | None, dict[str, Any]]:
        """A queued call's turn (shared/session_calls.Call): its outcome, or None if the session ended."""
        try:
            outcome = self._run(record, script, limits, inputs, canceled)
        except (SessionEnded, SandboxError):
            return None, record.body()
        log.info("session call: %s", outcome.status.value,
                 extra={"session_id": record.id, **run_fields(outcome)})
        return outcome, record.body()

    def _run(self, record: Record, script: str, limits: Limits, inputs: RunInput | None,
             canceled: threading.Event | None) -> Outcome:
        """One call, in the session's line; ends the record if the call ended the session
        (SessionEnded if it had ended before; SandboxError, logged, if the sandbox failed)."""
        if record.ended is not None:
            raise SessionEnded(record.ended)
        try:
            outcome = interruptible(record.session, script, limits, inputs, canceled)
        except SessionEnded as exc:
            self.end(record, exc.reason)
            raise
        except SandboxError:
            self.end(record, "lost")
            log.exception("a session's jail failed")
            raise
        if record.ended is not None:  # ended meanwhile from outside (DELETE, an expiry, a stop)
            raise SessionEnded(record.ended)
        record.last_used = time.time()
        SESSION_CALLS.labels(outcome.status.value).inc()
        SESSION_CALL_SECONDS.observe(outcome.duration_ms / 1000)
        if record.session.ended is not None:
            self.end(record, record.session.ended)
        return outcome

    def end(self, record: Record | SessionRecord, reason: str) -> None:
        """End the session (once): kill its jail, give its memory back, count and log it."""
        assert isinstance(record, Record), "a record of this process's sessions"
        with self._lock:
            if record.ended is not None:
                return
            record.ended, record.ended_at = reason, time.time()
        self.books.end(record.session, record.line, record.token, reason, record.id, record.client,
                       record.created_at)

    def reap(self) -> None:
        """End sessions idle or past their lifetime; forget ended ones past the record TTL."""
        now = time.time()
        with self._lock:
            records = list(self._records.values())
        for record in records:
            reason = None if record.ended is not None else expired(
                now, record.created_at, record.max_lifetime_s, record.last_used, record.idle_timeout_s,
                record.line)
            if reason is not None:
                self.end(record, reason)
            elif record.ended_at is not None and now >= record.ended_at + self.settings.session_record_ttl_s:
                with self._lock:
                    self._records.pop(record.id, None)

    def _reap_loop(self) -> None:
        while not self._stopped.wait(REAP_INTERVAL_S):
            try:
                self._beat()
                self.reap()
            except Exception:  # noqa: BLE001 - the reaper must outlive any one failure
                log.exception("the session reaper failed")

    def _beat(self) -> None:
        """Refresh this process's holder key while it holds sessions (Redis away: at the next beat;
        sync calls need no Redis)."""
        with self._lock:
            holding = any(record.ended is None for record in self._records.values())
        if self.redis is not None and holding:
            try:
                self.redis.set(self.holder_key, 1, ex=ALIVE_TTL_S)  # a run's: a busy reaper is not a death
            except RedisError:
                pass

    def counts(self) -> dict[str, int]:
        """For /health: sessions open and their caps."""
        with self._lock:
            open_ = sum(1 for r in self._records.values() if r.ended is None) + self._starting.total()
            spare = int(self._spare is not None)
        return {"open": open_, "max": self.settings.max_sessions,
                "max_per_client": self.settings.max_sessions_per_client, "spare": spare}

    def close(self, reason: str = "shutdown") -> None:
        """End every session (a graceful stop) and the reaper."""
        self._stopped.set()
        self._want_spare.set()
        with self._lock:
            records = list(self._records.values())
            spare, self._spare = self._spare, None
        if spare is not None:
            spare.close(reason)
        for record in records:
            self.end(record, reason)


class QueueSessions:
    """Sessions held by the workers (PYSANDBOX_EXECUTE_VIA_QUEUE; shared/session_queue.py): this
    API replica keeps nothing of them but reads and routes through Redis, so any replica answers.

    Caps are counted over the records in Redis: two replicas creating at the same instant may
    pass a cap by one. A session whose worker stopped serving is ended `lost` by the first
    request that sees it (or by the caps' count)."""

    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings, self.redis = settings, redis

    @reaching_redis
    def create(self, client: str, body: SessionRequest) -> SessionRecord:
        """A new session in whichever worker takes it first (429/503 past the caps; 501 when no
        worker serves sessions; 503 busy when none took it within PYSANDBOX_QUEUE_WAIT_S)."""
        limits, idle_s, lifetime_s = self.settings.session_limits(body.memory_mb, body.idle_timeout_s,
                                                                  body.max_lifetime_s)
        check_session_caps(self.settings, Counter(record.client for record in self._open_records()), client)
        if next(self.redis.scan_iter(match=worker_key("*"), count=1000), None) is None:
            raise SESSIONS_UNAVAILABLE("no worker serves sessions now (none is running, or they are of a "
                                       "version without sessions)")
        record = SessionRecord(str(uuid.uuid4()), client, "", limits.memory_mb, idle_s, lifetime_s)
        request = Request("create", record.id, limits=limits, record=record)
        payload = send(self.redis, NEW_SESSIONS_KEY, request)
        reply = wait_answer(self.redis, request, self.settings.queue_wait_s, None)
        if reply is None:
            if self.redis.lrem(NEW_SESSIONS_KEY, 1, payload):  # type: ignore[arg-type]
                raise busy("no worker took the new session", self.settings.retry_after_s)
            reply = wait_answer(self.redis, request, START_TIMEOUT_S + ANSWER_MARGIN_S, None)
        if reply is None:
            log.error("a worker took a new session and did not answer", extra={"session_id": record.id})
            raise INTERNAL_ERROR("the worker that took the session did not answer; the error was logged")
        record = self._answered(record, reply)
        SESSIONS_CREATED.inc()
        annotate(session_id=record.id)
        return record

    def _open_records(self) -> list[SessionRecord]:
        """The open sessions' records (those whose worker is gone are ended `lost`)."""
        found = []
        for member in self.redis.smembers(OPEN_SESSIONS_KEY):
            session_id = member.decode()  # type: ignore[union-attr]
            record = SessionRecord.load(self.redis, session_id)
            if record is None:
                self.redis.srem(OPEN_SESSIONS_KEY, session_id)
            elif record.ended is None and not self._lost(record):
                found.append(record)
        return found

    def _lost(self, record: SessionRecord) -> bool:
        """True, and the record ended `lost`, if its worker no longer serves sessions."""
        if self.redis.exists(worker_key(record.worker)):
            return False
        self._end_lost(record)
        return True

    def _end_lost(self, record: SessionRecord) -> None:
        record.ended, record.ended_at = "lost", time.time()
        record.save(self.redis, self.settings.session_record_ttl_s)
        log.warning("session lost: its worker stopped answering", extra={
            "session_id": record.id, "client": record.client, "worker": record.worker})

    @reaching_redis
    def find(self, session_id: str, client: str) -> SessionRecord:
        """The client's session record (open or ended); 404 for any other id."""
        record = SessionRecord.load(self.redis, session_id)
        if record is None or record.client != client:
            raise SESSION_NOT_FOUND("no such session of this client (or its record has expired)")
        return record

    @reaching_redis
    def open_record(self, session_id: str, client: str) -> SessionRecord:
        """As find(), and 410 session_ended if it is over (or its worker is gone: `lost`)."""
        record = self.find(session_id, client)
        if record.ended is not None or self._lost(record):
            raise ended_error(record)
        return record

    @reaching_redis
    def execute(self, record: Record | SessionRecord, script: str, limits: Limits,
                inputs: RunInput | None) -> Outcome:
        """One call in the session, in its worker: answered within the call's time limit plus
        ANSWER_MARGIN_S, or the session is ended `lost` (and its worker told to end it)."""
        assert isinstance(record, SessionRecord), "a record of the workers' sessions"
        request = Request("execute", record.id, limits=limits, script=script, inputs=inputs)
        send(self.redis, calls_key(record.worker), request)
        reply = wait_answer(self.redis, request, limits.timeout_s + ANSWER_MARGIN_S, record.worker)
        if reply is None:
            send(self.redis, calls_key(record.worker), Request("end", record.id, reason="lost"))
            raise self._gone(record)
        self._answered(record, reply)
        outcome = Outcome.from_dict(reply["outcome"])
        SESSION_CALLS.labels(outcome.status.value).inc()
        SESSION_CALL_SECONDS.observe(outcome.duration_ms / 1000)
        annotate(session_id=record.id, **run_fields(outcome))
        return outcome

    @reaching_redis
    def submit(self, record: Record | SessionRecord, asked: RunRequest, jobs: JobQueue,
               request_id: str) -> Job:
        """Queue a call as a job (shared/session_calls.py), behind the session's others in its worker."""
        assert isinstance(record, SessionRecord), "a record of the workers' sessions"
        job = jobs.submit(asked.script, asked.limits, asked.inputs, request_id, record.client,
                          asked.callback_url, SessionCall(record.id, worker_key(record.worker)))
        send(self.redis, calls_key(record.worker), Request("submit", record.id, job_id=job.id))
        return job

    @reaching_redis
    def end(self, record: Record | SessionRecord, reason: str) -> None:
        """End the session in its worker (its jail is killed there)."""
        assert isinstance(record, SessionRecord), "a record of the workers' sessions"
        request = Request("end", record.id, reason=reason)
        send(self.redis, calls_key(record.worker), request)
        reply = wait_answer(self.redis, request, ANSWER_MARGIN_S, record.worker)
        if reply is None:
            raise self._gone(record)
        self._answered(record, reply)

    def _gone(self, record: SessionRecord) -> ApiError:
        """410 for a session its worker no longer holds or answers for: the end its record says
        (a graceful stop's `shutdown`, an expiry), else `lost`."""
        stored = SessionRecord.load(self.redis, record.id)
        if stored is not None and stored.ended is not None:
            return ended_error(stored)
        self._end_lost(record)
        return ended_error(record)

    def _answered(self, record: SessionRecord, reply: dict[str, Any]) -> SessionRecord:
        """The record as the worker's answer has it; the answer's error raised as the API's."""
        if "record" in reply:
            vars(record).update(reply["record"])
        error = reply.get("error")
        if error == "session_ended":
            raise self._gone(record)
        if error == "session_busy":
            raise SESSION_BUSY(BUSY_MESSAGE)
        if error == "busy":
            raise busy(reply["message"], self.settings.retry_after_s)
        if error is not None:
            raise CATALOG[error](reply["message"])
        return record

    def counts(self) -> dict[str, int]:
        """For /health: sessions open (in every worker; left out while Redis is away) and their caps."""
        caps = {"max": self.settings.max_sessions, "max_per_client": self.settings.max_sessions_per_client,
                "spare": 0}
        try:
            return {"open": len(self._open_records()), **caps}
        except RedisError:
            return caps

    def close(self, reason: str = "shutdown") -> None:
        """Nothing to end here: the sessions are the workers' (a worker's graceful stop ends its own)."""


def ended_error(record: Record | SessionRecord) -> ApiError:
    """410 session_ended with its reason, and the session's last state beside the error."""
    return SESSION_ENDED(f"the session ended: {record.ended}", detail={"reason": record.ended},
                         extra={"session": record.body()})


def sessions_of(svc: Service) -> Sessions | QueueSessions:
    """The service's sessions: held in this process, or (an API that only enqueues) routed to the
    workers that hold them."""
    assert svc.sessions is not None, "create_app opens sessions in every run mode"
    return svc.sessions


def start_session(svc: Service, client: str, body: SessionRequest) -> Record | SessionRecord:
    """A new session of client once the sandbox has passed its self-test (POST /sessions, and
    MCP's create_session)."""
    sessions = sessions_of(svc)
    if isinstance(sessions, Sessions) and (svc.mode.selftest is None or not svc.mode.selftest.passed):
        raise SANDBOX_UNAVAILABLE("the sandbox failed its self-test; no session is started until it passes")
    return sessions.create(client, body)


def call_session(svc: Service, session_id: str, client: str, asked: RunRequest) -> dict[str, Any]:
    """One call in client's session, answered as POST /execute is with the session's state; a
    failed call is the ApiError of its outcome with that state (POST /sessions/<id>/execute, and
    MCP's run_in_session)."""
    sessions = sessions_of(svc)
    record = sessions.open_record(session_id, client)
    outcome = sessions.execute(record, asked.script, asked.limits, asked.inputs)
    state = {"session": record.body()}
    if not outcome.ok:
        error = outcome_error(outcome)
        error.extra.update(state)
        raise error
    return {**outcome_body(outcome), **state}


def queue_call(svc: Service, session_id: str, client: str, asked: RunRequest, request_id: str) -> Job:
    """Queue a call in client's session as a job, polled at GET /jobs/<id> (?async=1; 503
    queue_unavailable without Redis, as POST /execute?async=1)."""
    jobs = svc.job_queue()
    sessions = sessions_of(svc)
    return sessions.submit(sessions.open_record(session_id, client), asked, jobs, request_id)


def end_session(svc: Service, session_id: str, client: str) -> Record | SessionRecord:
    """End client's open session now (DELETE /sessions/<id>, and MCP's end_session)."""
    sessions = sessions_of(svc)
    record = sessions.open_record(session_id, client)
    sessions.end(record, "deleted")
    return record


bp = Blueprint("sessions", __name__)


@bp.post("/sessions")
def create_session() -> tuple[Response, int]:
    """Start a session: its own jail, whose state lasts from call to call."""
    body = parse_json(SessionRequest, request.get_data(cache=False) or b"{}")
    record = start_session(service(), client_id(), body)
    response = jsonify(record.body())
    response.headers["Location"] = url_for("sessions.get_session", session_id=record.id)
    return response, 201


@bp.get("/sessions/<session_id>")
def get_session(session_id: str) -> Response:
    """An open session's state, limits, usage and expiry; 410 (with its last state) once ended."""
    return jsonify(sessions_of(service()).open_record(session_id, client_id()).body())


@bp.delete("/sessions/<session_id>")
def delete_session(session_id: str) -> Response:
    """End a session now: its jail is killed. Answers its state, ended (`deleted`)."""
    return jsonify(end_session(service(), session_id, client_id()).body())


@bp.post("/sessions/<session_id>/execute")
def execute_in_session(session_id: str) -> Response:
    """Run a call in the session; answered as POST /execute is, with the session's state; or
    queue it (?async=1), answered as POST /execute?async=1 is."""
    asked = parse_run_request(request, service().settings)
    if asked.queued:
        job = queue_call(service(), session_id, client_id(), asked, request_id())
        return accepted(job.id)
    return jsonify(call_session(service(), session_id, client_id(), asked))
