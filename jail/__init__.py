"""The sandbox: run(script, limits) -> Outcome, in a fresh nsjail per run."""
from jail.limits import Limits
from jail.nsjail import host_cgroups, run_once as run
from jail.outcome import Outcome, SandboxError, Status

__all__ = ["Limits", "Outcome", "SandboxError", "Status", "host_cgroups", "run"]
