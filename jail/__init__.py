"""The sandbox: run(script, limits) -> Outcome, each run in a fresh jail."""
from jail.limits import Limits
from jail.nsjail import host_cgroups
from jail.outcome import OutFile, Outcome, SandboxError, Status
from jail.runinput import RunInput
from jail.runner import run, start_warm_pool, stop_warm_pool, warm_pool

__all__ = ["Limits", "OutFile", "Outcome", "RunInput", "SandboxError", "Status", "host_cgroups",
           "run", "start_warm_pool", "stop_warm_pool", "warm_pool"]
