"""Sessions in queue mode (PYSANDBOX_EXECUTE_VIA_QUEUE): the contract between the API and the
workers that hold the sessions' jails.

A session lives in the worker that created it. Each worker process serves a Redis list of its
own (calls_key(worker)) and the list every worker serves (NEW_SESSIONS_KEY, for POST /sessions:
Redis hands each request to the worker blocked longest, which spreads sessions over workers).
A request is a pickled Request; its answer is pushed to the request's own reply key. The
session's record (SessionRecord: its client, worker, state, limits, usage, expiry) is in Redis
(record_key), written by its worker, so that any API replica answers GET/DELETE and routes calls.

Each serving worker refreshes worker_key(worker) every WORKER_BEAT_S; once it is gone (the worker
died, or stopped), the session's record is ended `lost` by whichever API looks first. The API
waits for an answer at most the call's own bound, checking that key every second meanwhile.
"""
import json
import pickle
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from redis import Redis

from jail import Limits, RunInput

NEW_SESSIONS_KEY = "pysandbox:sessions:new"
OPEN_SESSIONS_KEY = "pysandbox:sessions:open"
"""The ids of sessions open (or open when their worker was last heard of), for caps and counts."""
WORKER_BEAT_S = 1.0
WORKER_ALIVE_TTL_S = 3
REPLY_TTL_S = 60
ANSWER_MARGIN_S = 10.0
"""What a call's answer may take beyond its own time limit (the interrupt's grace, the jail's
teardown, Redis round trips) before the API ends the session as lost."""


def worker_key(worker: str) -> str:
    """The key that says `worker` serves sessions now."""
    return f"pysandbox:session-worker:{worker}"


def calls_key(worker: str) -> str:
    """The list of requests for the sessions `worker` holds."""
    return f"pysandbox:session-calls:{worker}"


def record_key(session_id: str) -> str:
    """The session's record."""
    return f"pysandbox:session:{session_id}"


@dataclass
class Request:
    """One request to a worker: `op` is create (limits, lifetime_s), execute (script, limits,
    inputs), submit (job_id: a queued call, shared/session_calls.py) or end (reason)."""

    op: str
    session_id: str
    reply_key: str = field(default_factory=lambda: f"pysandbox:session-reply:{uuid.uuid4()}")
    limits: Limits | None = None
    script: str = ""
    inputs: RunInput | None = None
    reason: str = ""
    record: "SessionRecord | None" = None
    job_id: str = ""


@dataclass
class SessionRecord:
    """What any API replica knows of a session (the body of GET /sessions/<id> is body())."""

    id: str
    client: str
    worker: str
    memory_mb: int
    idle_timeout_s: float
    max_lifetime_s: float
    created_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)
    ended: str | None = None
    ended_at: float | None = None
    calls: int = 0
    cpu_ms: int | None = 0
    peak_memory_mb: float | None = None

    def body(self) -> dict[str, Any]:
        """As api/schemas.py's SessionState."""
        return session_state(self.id, self.ended, self.memory_mb, self.idle_timeout_s, self.max_lifetime_s,
                             self.created_at, self.last_used,
                             {"calls": self.calls, "cpu_ms": self.cpu_ms,
                              "peak_memory_mb": self.peak_memory_mb})

    def save(self, redis: Redis, record_ttl_s: float) -> None:
        """Store it: while open, for its lifetime plus the record's TTL; once ended, for the TTL."""
        ttl = record_ttl_s if self.ended else self.max_lifetime_s + record_ttl_s
        with redis.pipeline() as pipe:
            pipe.set(record_key(self.id), json.dumps(asdict(self)), ex=max(1, int(ttl)))
            if self.ended:
                pipe.srem(OPEN_SESSIONS_KEY, self.id)
            else:
                pipe.sadd(OPEN_SESSIONS_KEY, self.id)
            pipe.execute()

    @classmethod
    def load(cls, redis: Redis, session_id: str) -> "SessionRecord | None":
        """The stored record, or None."""
        raw = redis.get(record_key(session_id))
        return None if raw is None else cls(**json.loads(raw))


def session_state(session_id: str, ended: str | None, memory_mb: int, idle_timeout_s: float,
                  max_lifetime_s: float, created_at: float, last_used: float,
                  usage: dict[str, Any]) -> dict[str, Any]:
    """A session's state as api/schemas.py's SessionState (both run modes answer it)."""
    return {"id": session_id, "state": "open" if ended is None else "ended", "reason": ended,
            "memory_mb": memory_mb, "idle_timeout_s": idle_timeout_s, "max_lifetime_s": max_lifetime_s,
            "created_at": round(created_at, 3),
            "expires_at": round(min(last_used + idle_timeout_s, created_at + max_lifetime_s), 3),
            "usage": usage}


def send(redis: Redis, key: str, request: Request) -> bytes:
    """Queue a request on a worker's list (or the list for new sessions); its bytes, by which
    an unserved request can be taken back (LREM)."""
    payload = pickle.dumps(request)
    with redis.pipeline() as pipe:
        pipe.rpush(key, payload)
        pipe.expire(key, REPLY_TTL_S)  # a dead worker's list goes away by itself
        pipe.execute()
    return payload


def answer(redis: Redis, request: Request, reply: dict[str, Any]) -> None:
    """Push a request's answer where its sender waits."""
    with redis.pipeline() as pipe:
        pipe.rpush(request.reply_key, json.dumps(reply))
        pipe.expire(request.reply_key, REPLY_TTL_S)
        pipe.execute()


def wait_answer(redis: Redis, request: Request, wait_s: float, worker: str | None) -> dict[str, Any] | None:
    """The answer to request within wait_s, or None: none came, or `worker` (when known) stopped
    serving meanwhile (checked every second, so a dead worker is noticed within seconds)."""
    deadline = time.monotonic() + wait_s
    while (left := deadline - time.monotonic()) > 0:
        popped = redis.blpop([request.reply_key], timeout=min(1.0, left))
        if popped is not None:
            return json.loads(popped[1])
        if worker is not None and not redis.exists(worker_key(worker)):
            return None
    return None
