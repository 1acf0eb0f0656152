"""Feeding a jail its script and reading what it writes, within the run's caps and time.

Both kinds of jail (one-off and warm) hand the jailed process the child ends of the same
four pipes: the script comes in on stdin, stdout and stderr are read incrementally up to
their cap, and main()'s report comes back on a pipe of its own, so nothing the script
prints can pass for it.
"""
import os
import selectors
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from jail.cgroups import Usage
from jail.limits import Limits
from jail.outcome import Status
from jail.watchdog import MemoryWatch

CHUNK = 64 * 1024
MAX_LOG_BYTES = 64 * 1024
KILL_GRACE_S = 1.0
CANCEL_POLL_S = 0.2
"""How often a run with a cancel event looks at it: a canceled jail is stopped within this."""


@dataclass
class RawRun:
    """What came out of one run, before interpretation."""

    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    report: bytearray = field(default_factory=bytearray)
    log: bytearray = field(default_factory=bytearray)
    killed_for: Status | None = None
    elapsed_s: float = 0.0
    exit: dict[str, int | str] | None = None
    """How the run's first process ended: {"exit": code} or {"signal": "SIGKILL"}; None if unknown."""
    usage: Usage = field(default_factory=Usage)


class RunPipes:
    """One run's four pipes, and nsjail's log pipe if asked; close() closes what is still open."""

    def __init__(self, with_log: bool = False) -> None:
        self.stdin_r, self.stdin_w = os.pipe()
        self.stdout_r, self.stdout_w = os.pipe()
        self.stderr_r, self.stderr_w = os.pipe()
        self.report_r, self.report_w = os.pipe()
        self._open = {self.stdin_r, self.stdin_w, self.stdout_r, self.stdout_w,
                      self.stderr_r, self.stderr_w, self.report_r, self.report_w}
        self.log_r = self.log_w = None
        if with_log:
            self.log_r, self.log_w = os.pipe()
            self._open |= {self.log_r, self.log_w}

    @property
    def jail_ends(self) -> tuple[int, int, int, int]:
        """stdin, stdout, stderr and report, as the jailed process gets them."""
        return self.stdin_r, self.stdout_w, self.stderr_w, self.report_w

    def close(self, *fds: int) -> None:
        """Close these ends (all still open when none are named)."""
        for fd in fds or tuple(self._open):
            if fd in self._open:
                self._open.discard(fd)
                os.close(fd)

    def __enter__(self) -> "RunPipes":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def pump(pipes: RunPipes, source: bytes, limits: Limits, stop: Callable[[], None],
         watch: MemoryWatch | None = None, cancel: threading.Event | None = None) -> RawRun:
    """Feed the script in, read every pipe until the jail is gone; stop() it at its deadline,
    past a cap, (where a watchdog bounds memory) past its memory limit, or once cancel is set."""
    raw, start = RawRun(), time.monotonic()
    deadline = start + limits.timeout_s
    next_watch = start
    sinks = {pipes.stdout_r: raw.stdout, pipes.stderr_r: raw.stderr, pipes.report_r: raw.report}
    if pipes.log_r is not None:
        sinks[pipes.log_r] = raw.log
    sel = selectors.DefaultSelector()
    pending = memoryview(source)
    os.set_blocking(pipes.stdin_w, False)
    sel.register(pipes.stdin_w, selectors.EVENT_WRITE)
    pending = _feed(sel, pipes, pending)  # the pipe is empty: most scripts fit in it at once
    for fd in sinks:
        sel.register(fd, selectors.EVENT_READ)
    try:
        while sel.get_map():
            now = time.monotonic()
            if raw.killed_for is None and now >= deadline:
                raw.killed_for = Status.TIMEOUT
                stop()
            if raw.killed_for is None and cancel is not None and cancel.is_set():
                raw.killed_for = Status.CANCELED
                stop()
            if raw.killed_for is not None and now >= deadline + 2 * KILL_GRACE_S:
                break
            watching = watch if raw.killed_for is None else None
            if watching is not None and now >= next_watch:
                if watching.over_limit():
                    raw.killed_for = Status.MEMORY_LIMIT
                    stop()
                next_watch = now + watching.interval_s
            wait = next_watch - now if watching is not None else max(0.01, min(deadline - now, 0.5))
            if cancel is not None:
                wait = min(wait, CANCEL_POLL_S)
            for key, _ in sel.select(timeout=wait):
                if key.fd == pipes.stdin_w:
                    pending = _feed(sel, pipes, pending)
                    continue
                chunk = os.read(key.fd, CHUNK)
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                sinks[key.fd] += chunk
                over = _over_cap(raw, limits)
                if over is not None and raw.killed_for is None:
                    raw.killed_for = over
                    stop()
    finally:
        sel.close()
        pipes.close(pipes.stdin_w)
    raw.elapsed_s = time.monotonic() - start
    return raw


def _feed(sel: selectors.BaseSelector, pipes: RunPipes, pending: memoryview) -> memoryview:
    """Write what the pipe takes of the script; close stdin when all of it is in."""
    try:
        pending = pending[os.write(pipes.stdin_w, pending[:CHUNK]):]
    except BrokenPipeError:
        pending = pending[:0]
    if not pending:
        sel.unregister(pipes.stdin_w)
        pipes.close(pipes.stdin_w)
    return pending


def _over_cap(raw: RawRun, limits: Limits) -> Status | None:
    """Trim what was read to its cap; say which cap, if any, the jail went past."""
    del raw.log[MAX_LOG_BYTES:]
    if len(raw.stdout) + len(raw.stderr) > limits.max_output_bytes:
        keep_out = min(len(raw.stdout), limits.max_output_bytes)
        del raw.stdout[keep_out:]
        del raw.stderr[limits.max_output_bytes - keep_out:]
        return Status.OUTPUT_LIMIT
    if len(raw.report) > limits.max_report_bytes + MAX_LOG_BYTES:
        del raw.report[:]
        return Status.RESULT_TOO_LARGE
    return None
