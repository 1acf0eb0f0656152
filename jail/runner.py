"""run(script, limits) -> Outcome: in a warm jail when one is free, else in a one-off jail.

Both are full jails; a warm one only skips nsjail's and Python's start-up and the numpy
and pandas imports. The pool is per process: the API's gunicorn worker and each RQ
worker start their own.
"""
import threading
from collections.abc import Callable
from dataclasses import replace

from jail.limits import Limits
from jail.nsjail import host_cgroups, run_once
from jail.outcome import Outcome
from jail.runinput import RunInput
from jail.warm import WarmPool

_pool: WarmPool | None = None


def start_warm_pool(size: int, tmp_mb: int,
                    on_change: Callable[[int, int], None] | None = None) -> WarmPool | None:
    """Keep `size` warm jails from now on (none when size is 0); on_change(idle, size) is
    called whenever the number of idle ones changes."""
    global _pool
    stop_warm_pool()
    if size <= 0:
        return None
    _pool = WarmPool(size, tmp_mb, on_change=on_change)
    return _pool


def stop_warm_pool() -> None:
    """Kill this process's warm jails."""
    global _pool
    if _pool is not None:
        _pool.close()
        _pool = None


def warm_pool() -> WarmPool | None:
    """This process's pool, if one was started."""
    return _pool


def run(script: str, limits: Limits, cancel: threading.Event | None = None, *,
        inputs: RunInput | None = None) -> Outcome:
    """Run one script in a fresh jail and say how it ended (SandboxError if the jail failed).

    `inputs` (main()'s input, stdin, files) must be validated by the caller. Once `cancel` is
    set the jail is killed as at a timeout, within pipes.CANCEL_POLL_S, and the outcome is
    Status.CANCELED."""
    pool, enforcement = _pool, host_cgroups().enforcement.value
    outcome = pool.run(script, limits, cancel=cancel, inputs=inputs) if pool is not None else None
    if outcome is not None:
        return replace(outcome, jail=outcome.jail or "warm", enforcement=enforcement)
    return replace(run_once(script, limits, cancel=cancel, inputs=inputs), jail="one-off",
                   enforcement=enforcement)
