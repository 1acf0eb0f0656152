"""The sessions a worker holds (queue mode: shared/session_queue.py is the contract).

A SessionHost thread serves this process's list of session requests and the list of new
sessions. A call (sync, or a queued one's job id) goes into its session's line in the order it
was popped, which is the order the API accepted it (shared/session_calls.py: one at a time; a
sync call while another runs or waits is answered `session_busy`); creating and ending a session
are handled in a thread of their own. It refreshes
this worker's key, ends sessions idle or past their lifetime, and on a graceful stop ends every
session (`shutdown`). Each session's memory is reserved in the worker's ledger while it is open.
"""
import functools
import logging
import os
import pickle
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from jail import Limits, Outcome, RunInput, SandboxError
from jail.admission import MemoryLedger
from jail.session import Session, SessionEnded
from shared.logs import run_fields
from shared.session_books import MemoryBusy, MemoryNeverFits, SessionBooks, expired
from shared.session_calls import CallLine, LineClosed, interruptible, run_queued_call
from shared.session_queue import (
    NEW_SESSIONS_KEY,
    WORKER_ALIVE_TTL_S,
    WORKER_BEAT_S,
    Request,
    SessionRecord,
    answer,
    calls_key,
    worker_key,
)

log = logging.getLogger(__name__)


@dataclass
class Held:
    """One session this worker holds, its record and its memory's token."""

    session: Session
    record: SessionRecord
    token: str | None
    line: CallLine


class SessionHost:
    """This worker process's sessions, served from Redis by a thread of their own."""

    def __init__(self, redis: Redis, memory: MemoryLedger | None, record_ttl_s: float,
                 result_ttl_s: int) -> None:
        self.redis, self.books, self.record_ttl_s = redis, SessionBooks(memory), record_ttl_s
        self.result_ttl_s = result_ttl_s
        self.name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._held: dict[str, Held] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="session-host", daemon=True)

    def start(self) -> None:
        """Start serving (its thread sets this worker's key, and keeps trying while Redis is away)."""
        self._thread.start()

    def _serve(self) -> None:
        keys = [calls_key(self.name), NEW_SESSIONS_KEY]
        beat_at = 0.0
        while not self._stopped.is_set():
            try:
                if time.monotonic() >= beat_at:
                    self.redis.set(worker_key(self.name), 1, ex=WORKER_ALIVE_TTL_S)
                    beat_at = time.monotonic() + WORKER_BEAT_S
                    self._reap()
                popped = self.redis.blpop(keys, timeout=WORKER_BEAT_S / 2)
            except RedisError:
                log.warning("session host: Redis is away")
                self._stopped.wait(WORKER_BEAT_S)
                continue
            if popped is None:
                continue
            request: Request = pickle.loads(popped[1])  # type: ignore[arg-type]  # noqa: S301 - written by the API, over our Redis
            if request.op in ("execute", "submit"):
                self._line_up(request)  # here, in the order popped
            else:
                threading.Thread(target=self._handle, args=(request,), name=f"session-{request.op}",
                                 daemon=True).start()

    def _line_up(self, request: Request) -> None:
        """Put a call in its session's line: a queued one (its job) at once; a sync one if no call
        runs or waits (else `session_busy`), answered once it ran."""
        held = self._held.get(request.session_id)
        if request.op == "submit":
            work = functools.partial(run_queued_call, self.redis, request.job_id,
                                     functools.partial(self._queued, request.session_id), self.result_ttl_s)
            try:
                if held is None:
                    raise LineClosed
                held.line.submit(work, alone=False)
            except LineClosed:
                threading.Thread(target=work, name="session-ended", daemon=True).start()
            return
        future = None
        try:
            future = None if held is None else held.line.submit(functools.partial(self._handle, request),
                                                                   alone=True)
        except LineClosed:
            pass
        if future is None:
            reply = {"error": "session_busy"} if held is not None and held.record.ended is None \
                else {"error": "session_ended", "reason": "lost"}
            threading.Thread(target=self._reply, args=(request, reply), daemon=True).start()

    def _queued(self, session_id: str, script: str, limits: Limits, inputs: RunInput | None,
                canceled: threading.Event) -> tuple[Outcome | None, dict[str, Any] | None]:
        """A queued call's turn (shared/session_calls.Call): its outcome, or None if the session ended."""
        held = self._held.get(session_id)
        if held is None:
            record = SessionRecord.load(self.redis, session_id)
            return None, None if record is None else record.body()
        reply = self._execute(Request("execute", session_id, limits=limits, script=script, inputs=inputs),
                              canceled)
        if "outcome" not in reply:
            return None, held.record.body()
        return Outcome.from_dict(reply["outcome"]), held.record.body()

    def _handle(self, request: Request) -> None:
        try:
            handler = {"create": self._create, "execute": self._execute, "end": self._end_request}[request.op]
            reply = handler(request)
        except Exception:  # noqa: BLE001 - the sender must get an answer, whatever happened
            log.exception("session request failed", extra={"session_id": request.session_id})
            reply = {"error": "internal_error",
                     "message": "the session's worker failed; the error was logged"}
        self._reply(request, reply)

    def _reply(self, request: Request, reply: dict[str, Any]) -> None:
        try:
            answer(self.redis, request, reply)
        except RedisError:
            log.warning("session answer lost: Redis is away", extra={"session_id": request.session_id})

    def _create(self, request: Request) -> dict[str, Any]:
        record, limits = request.record, request.limits
        assert record is not None and limits is not None
        try:
            token = self.books.reserve(limits.memory_mb)
        except MemoryNeverFits as exc:
            return {"error": "memory_unavailable", "message": str(exc)}
        except MemoryBusy as exc:
            return {"error": "busy", "message": str(exc)}
        try:
            session = Session(limits, record.max_lifetime_s)
        except SandboxError:
            self.books.release(token)
            log.exception("a session's jail did not start")
            return {"error": "internal_error", "message": "the sandbox failed to start the session; "
                    "the error was logged"}
        record.worker = self.name
        with self._lock:
            self._held[record.id] = Held(session, record, token, CallLine(record.id))
        self.books.opened()
        record.save(self.redis, self.record_ttl_s)
        log.info("session started", extra={"session_id": record.id, "client": record.client})
        return {"record": asdict(record)}

    def _execute(self, request: Request, canceled: threading.Event | None = None) -> dict[str, Any]:
        """One call, in its session's line."""
        held = self._held.get(request.session_id)
        if held is None:
            return {"error": "session_ended", "reason": "lost"}
        assert request.limits is not None
        try:
            outcome = interruptible(held.session, request.script, request.limits, request.inputs, canceled)
        except SessionEnded as exc:
            self._end(held, exc.reason)
            return {"error": "session_ended", "reason": exc.reason}
        except SandboxError:
            log.exception("a session's jail failed", extra={"session_id": request.session_id})
            self._end(held, "lost")
            return {"error": "internal_error", "message": "the sandbox failed; the session ended; the error "
                    "was logged"}
        if request.session_id not in self._held:  # ended meanwhile from outside (DELETE, an expiry, a stop)
            return {"error": "session_ended", "reason": held.session.ended or "lost"}
        log.info("session call: %s", outcome.status.value,
                 extra={"session_id": held.record.id, **run_fields(outcome)})
        held.record.last_used = time.time()
        if held.session.ended is not None:
            self._end(held, held.session.ended)
        else:
            self._save_usage(held)
        return {"outcome": outcome.to_dict(), "record": asdict(held.record)}

    def _end_request(self, request: Request) -> dict[str, Any]:
        held = self._held.get(request.session_id)
        if held is not None:
            self._end(held, request.reason)
            return {"record": asdict(held.record)}
        return {"error": "session_ended", "reason": "lost"}

    def _save_usage(self, held: Held) -> None:
        usage = held.session.usage()
        held.record.calls, held.record.cpu_ms, held.record.peak_memory_mb = \
            usage.calls, usage.cpu_ms, usage.peak_memory_mb
        held.record.save(self.redis, self.record_ttl_s)

    def _end(self, held: Held, reason: str) -> None:
        """End a session (once): kill its jail, give its memory back, store its record, log it."""
        with self._lock:
            if self._held.pop(held.record.id, None) is None:
                return
        record = held.record
        record.ended, record.ended_at = reason, time.time()  # before its call (if any) comes back
        usage = self.books.end(held.session, held.line, held.token, reason, record.id, record.client,
                               record.created_at)
        record.calls, record.cpu_ms, record.peak_memory_mb = usage.calls, usage.cpu_ms, None
        try:
            record.save(self.redis, self.record_ttl_s)
        except RedisError:
            log.warning("session's end not stored: Redis is away", extra={"session_id": record.id})

    def _reap(self) -> None:
        """End sessions idle or past their lifetime."""
        now = time.time()
        with self._lock:
            held = list(self._held.values())
        for one in held:
            record = one.record
            reason = expired(now, record.created_at, record.max_lifetime_s, record.last_used,
                             record.idle_timeout_s, one.line)
            if reason is not None:
                self._end(one, reason)

    def close(self, reason: str = "shutdown") -> None:
        """Stop serving and end every session (a graceful stop)."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        with self._lock:
            held = list(self._held.values())
        for one in held:
            self._end(one, reason)
        try:
            self.redis.delete(worker_key(self.name))
        except RedisError:
            pass
