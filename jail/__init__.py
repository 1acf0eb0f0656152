"""The sandbox: run(script, limits) -> Outcome, each run in a fresh jail (Sandbox: warm ones)."""
from jail.limits import Limits
from jail.nsjail import host_cgroups
from jail.outcome import Outcome, OutFile, SandboxError, Status
from jail.runinput import RunInput
from jail.sandbox import Sandbox, run

__all__ = ["Limits", "OutFile", "Outcome", "RunInput", "Sandbox", "SandboxError", "Status", "host_cgroups",
           "run"]
