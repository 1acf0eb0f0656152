"""Fair sharing under a flood: client A keeps 20 CPU-bound 2-second scripts in flight, client B
sends a trivial script every 200 ms. Measures B's latency (p50/p99), the part of it B spent
waiting for a run slot (the service's Server-Timing `slot`; a refused request's whole latency),
B's errors, and A's share of the run capacity, against a service with fair sharing on and one with it off.

    .venv/bin/python bench/fairness.py URL_FAIR URL_UNFAIR KEY_A KEY_B [SECONDS]

tests/image/test_fairness.py runs it against the image (two containers, one after the other).
A honours Retry-After on 503 busy, as a client should (one that does not is what the rate
limits are for); it counts a run's `duration_ms` towards its share.
"""
import os
import re
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field

import requests

HOG = ("import time\ndef main():\n    end = time.monotonic() + 2\n    n = 0\n"
       "    while time.monotonic() < end:\n        n += 1\n    return n\n")
TRIVIAL = "def main():\n    return 1\n"
A_IN_FLIGHT = 20
B_EVERY_S = 0.2
SLOT = re.compile(r"slot;dur=([\d.]+)")


@dataclass
class Figures:
    """What one flood measured."""

    seconds: float
    slots: int
    b_latency_ms: list[float] = field(default_factory=list)
    b_slot_wait_ms: list[float] = field(default_factory=list)
    b_errors: dict[str, int] = field(default_factory=dict)
    a_run_ms: float = 0.0
    a_answers: dict[str, int] = field(default_factory=dict)
    load_1m: float = 0.0
    """The machine's load average at the end: the service is not alone on a shared machine."""

    @property
    def a_share(self) -> float:
        """A's run time over the run capacity (slots x seconds) of the measured window."""
        return self.a_run_ms / 1000 / (self.slots * self.seconds)

    def percentile(self, values: list[float], q: int) -> float:
        """The q-th percentile (inclusive method), 0 for no values."""
        if len(values) < 2:
            return values[0] if values else 0.0
        return statistics.quantiles(values, n=100, method="inclusive")[q - 1]

    def row(self, label: str) -> str:
        """One line of the table."""
        latency, wait = self.b_latency_ms, self.b_slot_wait_ms
        return (f"{label:<8} {len(latency):>5} {self.percentile(latency, 50):>8.1f} "
                f"{self.percentile(latency, 99):>8.1f} {self.percentile(wait, 99):>9.1f} "
                f"{sum(self.b_errors.values()):>6} {self.a_share:>8.0%} {self.load_1m:>6.1f}   "
                f"A: {dict(sorted(self.a_answers.items()))}")


HEADER = (f"{'sharing':<8} {'B req':>5} {'B p50ms':>8} {'B p99ms':>8} {'B wait99':>9} {'B errs':>6} "
          f"{'A share':>8} {'load':>6}")


def flood(url: str, key_a: str, key_b: str, seconds: float, slots: int, warmup_s: float = 4.0) -> Figures:
    """A floods alone for warmup_s (two of its runs: it takes every slot it may), then B arrives
    and sends for `seconds`; the figures are those of that window, B's first request included
    (a newcomer finds the slot kept for it: api/capacity.py)."""
    figures, lock, stop = Figures(seconds, slots), threading.Lock(), threading.Event()
    start = time.monotonic() + warmup_s
    end = start + seconds

    def client_a() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                began = time.monotonic()
                try:
                    answer = session.post(f"{url}/execute", json={"script": HOG, "timeout": 5},
                                          headers={"X-API-Key": key_a}, timeout=30)
                except requests.RequestException as exc:
                    outcome, run_ms, pause = type(exc).__name__, 0.0, 1.0
                else:
                    outcome = str(answer.status_code)
                    run_ms = answer.json().get("duration_ms", 0) if answer.status_code == 200 else 0.0
                    pause = float(answer.headers.get("Retry-After", 0)) if answer.status_code != 200 else 0
                ended = time.monotonic()
                if start <= began and ended <= end:
                    with lock:
                        figures.a_answers[outcome] = figures.a_answers.get(outcome, 0) + 1
                if ended > start and began < end and run_ms:  # the part of the run inside the window
                    inside_s = min(ended, end) - max(ended - run_ms / 1000, start)
                    with lock:
                        figures.a_run_ms += max(0.0, inside_s) * 1000
                stop.wait(pause)

    def b_request() -> None:
        began = time.monotonic()
        try:
            answer = requests.post(f"{url}/execute", json={"script": TRIVIAL},
                                   headers={"Authorization": f"Bearer {key_b}"}, timeout=30)
            error = None if answer.status_code == 200 else \
                f"{answer.status_code} {answer.json().get('error', {}).get('code')}"
            wait = SLOT.search(answer.headers.get("Server-Timing", ""))
        except requests.RequestException as exc:
            error, wait = type(exc).__name__, None
        took_ms = (time.monotonic() - began) * 1000
        if began >= start:
            with lock:
                figures.b_latency_ms.append(took_ms)
                if wait or error:  # a refused request waited all its answer's time
                    figures.b_slot_wait_ms.append(float(wait.group(1)) if wait else took_ms)
                if error:
                    figures.b_errors[error] = figures.b_errors.get(error, 0) + 1

    def client_b() -> None:
        """Open loop: a request every B_EVERY_S, each in its own thread, whether or not the last
        one was answered (a slow answer does not slow B down, as it would a closed loop)."""
        sent = []
        stop.wait(max(0.0, start - time.monotonic()))  # B arrives while A holds what it may
        tick = start
        while tick < end:
            sent.append(threading.Thread(target=b_request))
            sent[-1].start()
            tick += B_EVERY_S
            time.sleep(max(0.0, tick - time.monotonic()))
        for thread in sent:
            thread.join()

    threads = [threading.Thread(target=client_a) for _ in range(A_IN_FLIGHT)]
    threads.append(threading.Thread(target=client_b))
    for thread in threads:
        thread.start()
    threads[-1].join()
    stop.set()
    for thread in threads:
        thread.join()
    figures.load_1m = os.getloadavg()[0]
    return figures


def main() -> None:
    fair_url, unfair_url, key_a, key_b = sys.argv[1:5]
    seconds = float(sys.argv[5]) if len(sys.argv) > 5 else 20.0
    slots = requests.get(f"{fair_url}/health", timeout=10).json()["warm_jails"]["size"]
    print(HEADER)
    print(flood(fair_url, key_a, key_b, seconds, slots).row("fair"))
    print(flood(unfair_url, key_a, key_b, seconds, slots).row("off"))


if __name__ == "__main__":
    main()
