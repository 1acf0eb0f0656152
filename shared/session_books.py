"""The bookkeeping both holders of sessions keep alike: the API process in one container
(api/sessions.py's Sessions) and a worker in queue mode (worker/sessions.py's SessionHost).

A session's memory limit is reserved in the holder's memory ledger (jail/admission.py) while it is
open; ending it closes its line and its jail, gives the memory back, counts it and logs one line;
the reaper ends it once idle or past its lifetime. Each holder keeps its own records (the API's in
memory, a worker's also in Redis) and makes sure a session is ended once.
"""
import logging
import time

from jail.admission import MemoryLedger
from jail.session import Session, SessionUsage
from shared.metrics import SESSIONS_ENDED, SESSIONS_OPEN
from shared.session_calls import CallLine

log = logging.getLogger(__name__)


class MemoryNeverFits(Exception):
    """The session's memory cannot fit beside what this process holds, ever (the message says so)."""


class MemoryBusy(Exception):
    """The session's memory is not free now (the message says so)."""


class SessionBooks:
    """A holder's ledger of its sessions' memory, and how it ends a session."""

    def __init__(self, memory: MemoryLedger | None) -> None:
        self.memory = memory

    def reserve(self, memory_mb: int) -> str | None:
        """The session's memory, held in the ledger until release() (None without admission by
        memory); MemoryNeverFits or MemoryBusy when it cannot be."""
        if self.memory is None:
            return None
        need = self.memory.cost(memory_mb)
        if self.memory.never_fits(need):
            raise MemoryNeverFits(f"the session's {memory_mb} MB cannot fit beside what this service holds: "
                                  "ask for less memory")
        token = self.memory.try_reserve(need)
        if token is None:
            raise MemoryBusy(f"no memory free for the session's {memory_mb} MB limit")
        return token

    def release(self, token: str | None) -> None:
        """Give a session's memory back."""
        if token is not None and self.memory is not None:
            self.memory.release(token)

    def opened(self) -> None:
        """A session was started (counted open until end())."""
        SESSIONS_OPEN.inc()

    def end(self, session: Session, line: CallLine, token: str | None, reason: str, session_id: str,
            client: str, created_at: float) -> SessionUsage:
        """End an open session for `reason` (its holder calls this once): no more calls, its jail
        killed, its memory back, counted and logged. What it used."""
        line.close()
        session.close(reason)
        self.release(token)
        SESSIONS_OPEN.dec()
        SESSIONS_ENDED.labels(reason).inc()
        usage = session.usage()
        log.info("session ended: %s", reason, extra={
            "session_id": session_id, "client": client, "reason": reason, "calls": usage.calls,
            "cpu_ms": usage.cpu_ms, "lifetime_s": round(time.time() - created_at, 3)})
        return usage


def expired(now: float, created_at: float, max_lifetime_s: float, last_used: float, idle_timeout_s: float,
            line: CallLine) -> str | None:
    """Why the reaper ends an open session now: `lifetime` (even during a call), `idle` (no call
    runs or waits), or None."""
    if now >= created_at + max_lifetime_s:
        return "lifetime"
    if line.idle and now >= last_used + idle_timeout_s:
        return "idle"
    return None
