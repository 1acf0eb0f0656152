"""Sandbox: runs scripts in a warm jail of its own when one is free, else in a one-off jail.

Both are full jails; a warm one only skips nsjail's and Python's start-up and the numpy
and pandas imports. Each process that runs scripts makes its Sandbox once (the API's gunicorn
worker, each RQ worker) and hands it to what runs scripts; `run` alone is a one-off jail.
"""
import threading
from collections.abc import Callable
from dataclasses import replace

from jail.cgroups import Cgroups
from jail.limits import Limits
from jail.nsjail import host_cgroups, run_once
from jail.outcome import Outcome
from jail.runinput import RunInput
from jail.warm import WarmPool


def run(script: str, limits: Limits, cancel: threading.Event | None = None, *,
        inputs: RunInput | None = None, host: Cgroups | None = None) -> Outcome:
    """Run one script in a fresh one-off jail and say how it ended (SandboxError if the jail
    failed). `host`: the cgroups to use (default: this host's).

    `inputs` (main()'s input, stdin, files) must be validated by the caller. Once `cancel` is
    set the jail is killed as at a timeout, within pipes.CANCEL_POLL_S, and the outcome is
    Status.CANCELED."""
    host = host or host_cgroups()
    return replace(run_once(script, limits, host, cancel, inputs=inputs), jail="one-off",
                   enforcement=host.enforcement.value)


class Sandbox:
    """Runs scripts as `run` does, in one of `warm_jails` warm jails (whose /tmp holds tmp_mb)
    when one is free; on_change(idle, size) is called whenever the number of idle ones changes."""

    def __init__(self, warm_jails: int = 0, tmp_mb: int = Limits.tmp_mb, host: Cgroups | None = None,
                 on_change: Callable[[int, int], None] | None = None) -> None:
        self.host = host
        self.pool = WarmPool(warm_jails, tmp_mb, host, on_change) if warm_jails > 0 else None

    def run(self, script: str, limits: Limits, cancel: threading.Event | None = None, *,
            inputs: RunInput | None = None) -> Outcome:
        """As `run`, in a warm jail when one is free."""
        outcome = self.pool.run(script, limits, cancel=cancel, inputs=inputs) if self.pool else None
        if outcome is not None:
            return replace(outcome, jail=outcome.jail or "warm",
                           enforcement=(self.host or host_cgroups()).enforcement.value)
        return run(script, limits, cancel, inputs=inputs, host=self.host)

    @property
    def warm_jails(self) -> dict[str, int]:
        """{"size", "idle"}: the warm jails kept, and those ready now."""
        return {"size": self.pool.size if self.pool else 0, "idle": self.pool.idle if self.pool else 0}

    def close(self) -> None:
        """Kill the warm jails."""
        if self.pool is not None:
            self.pool.close()
