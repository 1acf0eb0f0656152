"""What one run produced: a status, main()'s result or the script's error, and its output."""
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any


class Status(str, Enum):
    """How a run ended. Everything but OK is the script's own fault."""

    OK = "ok"
    SYNTAX_ERROR = "syntax_error"
    NO_MAIN = "no_main"
    MAIN_ERROR = "main_error"
    INVALID_RESULT = "invalid_result"
    TIMEOUT = "timeout"
    MEMORY_LIMIT = "memory_limit"
    OUTPUT_LIMIT = "output_limit"
    RESULT_TOO_LARGE = "result_too_large"
    NO_RESULT = "no_result"
    CANCELED = "canceled"
    """The caller's cancel event was set (a job canceled by its client): not the script's fault."""


class SandboxError(Exception):
    """The sandbox itself failed (nsjail did not start, cgroups broke): the service's fault."""


@dataclass(frozen=True)
class Outcome:
    """The result of one run, as plain data (it travels through Redis as a dict)."""

    status: Status
    result: Any = None
    message: str = ""
    traceback: str | None = None
    stdout: str = ""
    stderr: str = ""
    output_truncated: bool = False
    duration_ms: int = 0
    cpu_ms: int | None = None
    """CPU time of the run's processes; None where the host cannot measure it."""
    peak_memory_mb: float | None = None
    """The most memory the run held at once (MiB, one decimal); None where not measured."""
    jail: str = ""
    """The kind of jail it ran in: "warm" or "one-off" (jail.run sets it)."""

    @property
    def ok(self) -> bool:
        """True when main() returned a JSON value."""
        return self.status is Status.OK

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict that from_dict() turns back into the same Outcome."""
        return {**asdict(self), "status": self.status.value}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Outcome":
        """The inverse of to_dict()."""
        return cls(**{**data, "status": Status(data["status"])})
