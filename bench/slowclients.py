"""Slow clients against a running service: PER_KIND connections that trickle their headers a byte
a second, PER_KIND that trickle a body (then stop), and PER_KIND that send nothing, all held open
together while a benign client sends 50 sequential trivial runs. Measures the benign client's
latency (p50/p99) on the idle service and under the slow connections, and how long the server
took to close each kind of slow connection.

    .venv/bin/python bench/slowclients.py URL [PER_KIND]      (PER_KIND: 500 by default)

tests/image/test_proxy.py runs it against the image (`make image`, loopback only) and asserts what is
guaranteed: every benign request answered 200, every slow connection closed by the server within
nginx's bounds (docker/nginx.conf) plus a margin. The latencies are printed, not asserted.
"""
import asyncio
import http.client
import resource
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import SCRIPTS, post  # noqa: E402

BENIGN_REQUESTS = 50
TRICKLE_EVERY_S = 1.0
BODY_TRICKLE_S = 3.0
"""How long a body trickles before it stalls (its server-side bound runs from its last byte)."""
HOLD_S = 60.0
"""The most a slow connection is kept open from this side: the server should close it long before."""
HEADERS = b"POST /execute HTTP/1.1\r\nHost: x\r\nX-Slow: "
BODY_START = (b"POST /execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 100000\r\n\r\n{")
KINDS = {"headers": HEADERS, "body": BODY_START, "nothing": b""}


@dataclass
class Slow:
    """One slow connection: when it connected, sent its last byte and was closed by the server."""

    kind: str
    connected: float = 0.0
    last_sent: float = 0.0
    closed: float = 0.0
    error: str = ""

    @property
    def open_s(self) -> float:
        """From its connection (headers, nothing) or its last byte (body) to the server's close."""
        return self.closed - (self.last_sent if self.kind == "body" else self.connected)


@dataclass
class Figures:
    """What one run measured."""

    idle_ms: list[float] = field(default_factory=list)
    loaded_ms: list[float] = field(default_factory=list)
    benign_statuses: list[int] = field(default_factory=list)
    slow: list[Slow] = field(default_factory=list)
    open_at_benign_start: int = 0
    still_open_after_benign: int = 0
    """Slow connections open when the benign client's first request went, and at its last answer."""

    @staticmethod
    def percentile(values: list[float], q: int) -> float:
        """The q-th percentile (inclusive method)."""
        if len(values) < 2:
            return values[0] if values else float("nan")
        return statistics.quantiles(values, n=100, method="inclusive")[q - 1]

    def report(self) -> str:
        """The table bench/slowclients.py prints (and the test shows)."""
        lines = [f"{'benign client':28} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8}"]
        for label, values in (("idle service", self.idle_ms),
                              (f"under {len(self.slow)} slow connections", self.loaded_ms)):
            lines.append(f"{label:28} {len(values):8d} {self.percentile(values, 50):8.1f} "
                         f"{self.percentile(values, 99):8.1f}")
        lines.append(f"\nslow connections open at the benign client's first request: "
                     f"{self.open_at_benign_start} of {len(self.slow)}; at its last answer: "
                     f"{self.still_open_after_benign}")
        lines.append(f"{'closed by the server after':28} {'count':>8} {'min s':>8} {'max s':>8}"
                     "  (body: from its last byte)")
        for kind in KINDS:
            times = [s.open_s for s in self.slow if s.kind == kind and s.closed]
            never = sum(1 for s in self.slow if s.kind == kind and not s.closed)
            lines.append(f"{kind:28} {len(times):8d} {min(times, default=0):8.1f} "
                         f"{max(times, default=0):8.1f}"
                         + (f"  ({never} not closed within {HOLD_S:.0f} s)" if never else ""))
        return "\n".join(lines)


def benign(url: str, count: int) -> tuple[list[float], list[int]]:
    """count sequential trivial runs on one kept-alive connection: latencies (ms) and statuses."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    latencies, statuses = [], []
    for _ in range(count):
        start = time.perf_counter()
        status, _ = post(conn, "/execute", {"script": SCRIPTS["trivial"]})
        latencies.append((time.perf_counter() - start) * 1000)
        statuses.append(status)
    conn.close()
    return latencies, statuses


async def _hold(host: str, port: int, slow: Slow, opened: asyncio.Semaphore) -> None:
    """Connect, send the kind's first bytes, trickle; until the server closes (or HOLD_S)."""
    async with opened:  # a bounded number of connects at a time, as a client's kernel would queue them
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as exc:
            slow.error = f"connect: {exc}"
            return
    slow.connected = slow.last_sent = time.monotonic()
    try:
        writer.write(KINDS[slow.kind])
        await writer.drain()
        while time.monotonic() - slow.connected < HOLD_S:
            try:
                if await asyncio.wait_for(reader.read(4096), TRICKLE_EVERY_S) == b"":
                    break
            except TimeoutError:
                if slow.kind == "headers" or (slow.kind == "body" and
                                              time.monotonic() - slow.connected < BODY_TRICKLE_S):
                    writer.write(b"a" if slow.kind == "headers" else b" ")
                    await writer.drain()
                    slow.last_sent = time.monotonic()
        else:
            return  # still open after HOLD_S: slow.closed stays 0
    except OSError:  # reset by the server (nginx resets timed-out connections)
        pass
    slow.closed = time.monotonic()
    writer.close()


async def _hold_all(host: str, port: int, slow: list[Slow]) -> None:
    opened = asyncio.Semaphore(64)
    await asyncio.gather(*(_hold(host, port, one, opened) for one in slow))


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, needed), hard))


def measure(url: str, per_kind: int = 500) -> Figures:
    """Idle latencies, then 3 x per_kind slow connections with the benign client meanwhile, then
    until the server has closed every slow connection (or HOLD_S)."""
    _raise_fd_limit(3 * per_kind + 256)
    figures = Figures()
    benign(url, 5)  # warm-up
    figures.idle_ms, _ = benign(url, BENIGN_REQUESTS)
    host, port = url.removeprefix("http://").split(":")
    figures.slow = [Slow(kind) for _ in range(per_kind) for kind in KINDS]
    held = threading.Thread(target=asyncio.run, args=(_hold_all(host, int(port), figures.slow),))
    held.start()
    deadline = time.monotonic() + 60
    while held.is_alive() and time.monotonic() < deadline and \
            sum(1 for s in figures.slow if s.connected or s.error) < len(figures.slow):
        time.sleep(0.05)
    time.sleep(TRICKLE_EVERY_S)  # every connection has sent its first bytes
    figures.open_at_benign_start = _still_open(figures.slow)
    figures.loaded_ms, figures.benign_statuses = benign(url, BENIGN_REQUESTS)
    figures.still_open_after_benign = _still_open(figures.slow)
    held.join()
    return figures


def _still_open(slow: list[Slow]) -> int:
    return sum(1 for one in slow if one.connected and not one.closed)


def main() -> None:
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    figures = measure(sys.argv[1], int(sys.argv[2]) if len(sys.argv) == 3 else 500)
    print(figures.report())
    errors = [s.error for s in figures.slow if s.error]
    print(f"benign statuses: {sorted(set(figures.benign_statuses))}; slow connections not made: {len(errors)}"
          + (f" (first: {errors[0]})" if errors else ""))


if __name__ == "__main__":
    main()
