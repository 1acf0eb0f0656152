"""Hostile scripts that press on a run's limits, shared by the Docker and VM tiers, the check
that one of them stayed within its memory limit, and a client that waits its turn."""
import time
from typing import Any

import requests

from jail import Limits

CHILDREN, CHILD_MB = 12, 200
DEFAULT_LIMIT_MB = Limits().memory_mb
MEMORY_SUM = f"""
import os, time
def main():
    # A pipe as a barrier: every child holds its {CHILD_MB} MB until all are forked, then 3 s
    # more, so the memory the run holds at once is the sum over the children.
    r, w = os.pipe()
    pids = []
    for _ in range({CHILDREN}):
        try:
            pid = os.fork()
        except OSError:
            break
        if pid == 0:
            os.close(w)
            block = b'x' * ({CHILD_MB} * 1024 * 1024)
            os.read(r, 1)
            time.sleep(3)
            os._exit(0 if len(block) else 1)
        pids.append(pid)
    os.close(w)
    return {{"forked": len(pids), "codes": [os.waitpid(pid, 0)[1] for pid in pids]}}
"""

FORK_BOMB = """
import os, time
def main():
    while True:
        try:
            if os.fork() == 0:
                time.sleep(60)
                os._exit(0)
        except OSError:
            pass
"""

SPIN_S = 2.0
CPU_HOG = f"""
import os, time
def spin():
    end = time.monotonic() + {SPIN_S}
    while time.monotonic() < end:
        pass
def main():
    pids = []
    for _ in range(3):
        pid = os.fork()
        if pid == 0:
            spin()
            os._exit(0)
        pids.append(pid)
    spin()
    return [os.waitpid(pid, 0)[1] for pid in pids]
"""

TMP_FILL = """
def main():
    written = 0
    try:
        with open('/tmp/fill', 'wb') as out:
            while True:
                out.write(b'x' * 1024 * 1024)
                written += 1
    except OSError as exc:
        return {'mb': written, 'error': str(exc)}
"""


def memory_bound_problem(status: int, body: dict[str, Any], peak_limit_mb: float | None,
                         crowded: bool = False) -> str | None:
    """Why a MEMORY_SUM answer shows the run exceeded its limit; None when it was bounded:
    a memory_limit 422, or a 200 in which no more children finished holding their block
    than the limit allows. Crowded (runs at once that together exceed the container's
    memory, whose page cache then thrashes), a timeout is bounded too, provided its peak was.
    peak_limit_mb None: the peak is a sample (the watchdog's), not checked (bench/watchdog.py)."""
    if status == 422:
        allowed = ("memory_limit", "timeout") if crowded else ("memory_limit",)
        if body["error"]["code"] not in allowed:
            return f"422 {body['error']['code']}, not {' or '.join(allowed)}"
    elif status != 200:
        return f"HTTP {status}"
    else:
        codes = body["result"]["codes"]
        survivors = sum(code == 0 for code in codes)
        if survivors > (peak_limit_mb or DEFAULT_LIMIT_MB) // CHILD_MB:
            return f"{survivors} of {len(codes)} children held {CHILD_MB} MB each at once"
    peak = body.get("peak_memory_mb", "missing")
    if peak_limit_mb is None:
        return None
    if not (peak is None or (isinstance(peak, (int, float)) and peak <= peak_limit_mb)):
        return f"peak_memory_mb {peak} over {peak_limit_mb}"
    return None


def post_in_turn(url: str, body: dict[str, Any], within_s: float = 300) -> requests.Response:
    """POST as a patient client does: a 503 busy (every slot taken, or no memory free for the
    run's limit: admission by memory) is retried after its Retry-After, until within_s."""
    deadline = time.monotonic() + within_s
    while True:
        answer = requests.post(url, json=body, timeout=body.get("timeout", 5) + 120)
        busy = answer.status_code == 503 and answer.json().get("error", {}).get("code") == "busy"
        if not busy or time.monotonic() > deadline:
            return answer
        time.sleep(float(answer.headers.get("Retry-After", "1")))
