"""Run slots shared fairly between clients; past them, requests are refused with 503 busy.

A fixed number of slots (PYSANDBOX_MAX_CONCURRENT_RUNS) run at once. Four rules share them:

- A cap per client. A client alone may hold every slot. While other
  clients are present (they asked for a slot in the last PRESENT_S seconds, or hold or wait for
  one), a client's cap leaves each of them the slots it holds and waits for plus one free, or as
  many as it asked for at once in the last PRESENT_S if more: slots - sum(max(held + waiting +
  1, recent peak)) over the others, never under its even share, slots // clients present. So a
  light client finds a free slot for its next request at once, instead of waiting behind a heavy
  one's long runs (which give a slot back only as they end: the recent peak keeps room for a
  light client whose runs overlap, on a loaded machine); the heavy one keeps slots - 1 (3 of 4
  here) while the light one sends one request at a time, and comes down towards its even share
  as the light one needs more.
- Turns between clients. Requests that find no slot they may take wait in a queue of their
  own client; a freed slot goes to the next client in turn that is under its cap (round robin),
  and within a client to its oldest request. A client's flood does not push others back.
- A slot for a newcomer. The cap above protects a client only once it has been seen: a client
  arriving while another holds every slot would wait for one of its runs to end. So a client
  that holds no slot and finds none free takes one more than `slots` (at most `reserved` such in
  all; the default is one where slots outnumber cores, api/__init__.py): it is served at once,
  and a client alone still uses every slot. At most slots + reserved runs are in flight.
- Memory. Where a memory ledger is given (jail/admission.py), a slot also needs the run's
  memory limit to fit beside the runs in flight in this container (the RQ workers' too) and
  what the service holds: a request whose memory does not fit waits like one past the slots,
  in the same turns; the next client in turn whose oldest request fits goes first. Other
  processes free memory without telling this one, so waiting requests look again every
  admission.POLL_S. A limit that cannot fit even with no run in flight is refused at once
  (503 memory_unavailable).
- Short, bounded waits. A request waits at most PYSANDBOX_QUEUE_WAIT_S, and at most `slots`
  requests of one client (2 x slots in all) wait at once: past that, 503 busy at once, with
  Retry-After. So waiting requests never hold more than 2 x slots of gunicorn's threads
  (api/gunicorn.conf.py has 3 x slots + 4), and a flood of one client is answered in
  milliseconds instead of filling the threads and the accept queue ahead of everybody else.

Hand-rolled: threading has no fair semaphore, and no library schedules per-client turns
in-process; this is a few dozen lines over one lock.
With fair sharing off (PYSANDBOX_FAIR_SHARING=false) every request counts as one client: the
slots are then first come, first served, as a plain semaphore.
"""
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from api.errors import MEMORY_UNAVAILABLE, ApiError, busy
from jail.admission import POLL_S, MemoryLedger
from jail.limits import MIB
from shared.metrics import SLOTS_IN_USE

PRESENT_S = 5.0
"""A client that asked for a slot this recently still counts as present (it is between
requests, not gone): a light client sending every few hundred ms keeps its free slot."""
EVERYONE = "*"


@dataclass
class Turn:
    """A request waiting for a slot: the memory it needs, and once granted, its reservation."""

    nbytes: int
    event: threading.Event = field(default_factory=threading.Event)
    token: str = ""


class Capacity:
    """Slots for concurrent runs in this process, shared fairly between clients."""

    def __init__(self, slots: int, wait_s: float, retry_after_s: int, fair: bool = True,
                 reserved: int = 0, memory: MemoryLedger | None = None) -> None:
        """A client that holds none may run past `slots`, `reserved` at most (fair sharing on);
        with memory, a run also needs its memory limit free in that ledger."""
        self.slots, self._wait_s, self._retry_after_s, self._fair = slots, wait_s, retry_after_s, fair
        self.memory = memory
        self._reserved = reserved if fair else 0
        self._lock = threading.Lock()
        self._held: Counter[str] = Counter()
        self._seen: dict[str, float] = {}
        self._peak: dict[str, tuple[int, float]] = {}
        """Each client's most slots held and asked for at once lately, and since when."""
        self._waiting: OrderedDict[str, deque[Turn]] = OrderedDict()
        """Clients in turn order, each with its waiting requests, oldest first."""

    @property
    def in_use(self) -> int:
        """Slots held now."""
        with self._lock:
            return self._held.total()

    @contextmanager
    def slot(self, client: str, memory_mb: int = 0) -> Iterator[float]:
        """Hold a slot (and memory_mb of memory) for one run, waiting for it at most wait_s
        (else 503 busy); yields the seconds waited."""
        client = client if self._fair else EVERYONE
        started = time.monotonic()
        nbytes = self.memory.cost(memory_mb) if self.memory is not None else 0
        token = self._acquire(client, started, nbytes)
        SLOTS_IN_USE.inc()
        try:
            yield time.monotonic() - started
        finally:
            SLOTS_IN_USE.dec()
            if self.memory is not None:
                self.memory.release(token)
            with self._lock:
                self._held[client] -= 1
                if not self._held[client]:
                    del self._held[client]
                self._grant()

    def _acquire(self, client: str, now: float, nbytes: int) -> str:
        """A slot for client: its memory reservation's token ("" without a ledger)."""
        with self._lock:
            self._seen[client] = now
            self._forget(now)
            demand = self._held[client] + len(self._waiting.get(client, ())) + 1
            if demand >= self._peak.get(client, (0, 0.0))[0]:
                self._peak[client] = (demand, now)
            self._grant()  # caps change as clients come and go
            if client not in self._waiting and (token := self._take(client, nbytes)) is not None:
                return token
            if self.memory is not None and self.memory.never_fits(nbytes):
                raise self._never_fits(nbytes)
            queue = self._waiting.get(client, deque())
            if len(queue) >= self.slots or sum(map(len, self._waiting.values())) >= 2 * self.slots:
                raise self._busy()
            turn = Turn(nbytes)
            queue.append(turn)
            self._waiting.setdefault(client, queue)
        if self._wait(turn, now + self._wait_s):
            return turn.token
        with self._lock:
            if turn.event.is_set():  # granted just as the wait ended
                return turn.token
            queue.remove(turn)
            if not queue:
                del self._waiting[client]
        raise self._busy()

    def _wait(self, turn: Turn, deadline: float) -> bool:
        """Wait for turn to be granted until deadline; True if it was. With a ledger, look
        again every POLL_S: memory freed by other processes wakes nobody here."""
        while (left := deadline - time.monotonic()) > 0:
            if turn.event.wait(left if self.memory is None else min(left, POLL_S)):
                return True
            with self._lock:
                self._grant()
        return turn.event.is_set()

    def _busy(self) -> ApiError:
        return busy("the service is at capacity", self._retry_after_s)

    def _never_fits(self, nbytes: int) -> ApiError:
        assert self.memory is not None
        room = self.memory.room()
        return MEMORY_UNAVAILABLE(f"a run reserving {nbytes // MIB} MB cannot fit in the "
                                  f"{max(0, room) // MIB} MB this service has for runs beside what it "
                                  "holds (GET /health, memory); ask for less memory")

    def _take(self, client: str, nbytes: int) -> str | None:
        """Take a slot, and nbytes from the ledger, for client if both are free to it now: the
        reservation's token ("" without a ledger), else None (lock held)."""
        if not self._may_take(client):
            return None
        token = "" if self.memory is None else self.memory.try_reserve(nbytes)
        if token is not None:
            self._held[client] += 1
        return token

    def _may_take(self, client: str) -> bool:
        """Whether client may take a slot now: a free one under its cap, or, holding none, one
        of the `reserved` beyond `slots` (lock held)."""
        held = self._held.total()
        if held < self.slots and self._held[client] < self._cap(client):
            return True
        return not self._held[client] and held < self.slots + self._reserved

    def _cap(self, client: str) -> int:
        others = (self._seen.keys() | self._held.keys() | self._waiting.keys()) - {client}
        if not others:
            return self.slots
        kept = sum(max(self._held[other] + len(self._waiting.get(other, ())) + 1,
                       self._peak.get(other, (0, 0.0))[0]) for other in others)
        return max(1, self.slots // (len(others) + 1), self.slots - kept)

    def _grant(self) -> None:
        """Give free slots to waiting requests, one client after another: the first client in
        turn whose oldest request may take a slot and fits in memory (lock held)."""
        while True:
            for client, queue in self._waiting.items():
                token = self._take(client, queue[0].nbytes)
                if token is not None:
                    break
            else:
                return
            turn = queue.popleft()
            turn.token = token
            turn.event.set()
            if queue:
                self._waiting.move_to_end(client)  # its next request waits for the others' turns
            else:
                del self._waiting[client]

    def _forget(self, now: float) -> None:
        """Drop clients not seen, and peaks not reached again, for PRESENT_S (lock held)."""
        for client in [c for c, seen in self._seen.items() if now - seen > PRESENT_S]:
            del self._seen[client]
        for client in [c for c, (_, since) in self._peak.items() if now - since > PRESENT_S]:
            del self._peak[client]
