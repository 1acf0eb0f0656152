"""What one run produced: a status, main()'s result or the script's error, and its output."""
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any


class Status(str, Enum):
    """How a run ended. Everything but OK is the script's own fault."""

    OK = "ok"
    SYNTAX_ERROR = "syntax_error"
    NO_MAIN = "no_main"
    MAIN_SIGNATURE = "main_signature"
    """main() cannot be called with the request's input (or needs one and got none)."""
    MAIN_ERROR = "main_error"
    INVALID_RESULT = "invalid_result"
    TIMEOUT = "timeout"
    MEMORY_LIMIT = "memory_limit"
    OUTPUT_LIMIT = "output_limit"
    RESULT_TOO_LARGE = "result_too_large"
    NO_RESULT = "no_result"
    CANCELED = "canceled"
    """The caller's cancel event was set (a job canceled by its client): not the script's fault."""
    MEMORY_UNAVAILABLE = "memory_unavailable"
    """Not run: the memory its limit asks for was not free in time, or never can be here
    (jail/admission.py); not the script's fault."""


@dataclass(frozen=True)
class OutFile:
    """A file the script left under out/, checked on the host (name, size, base64)."""

    name: str
    size: int
    media_type: str
    content: str
    """The file's bytes in base64."""
    encoding: str = "base64"


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
    enforcement: str = ""
    """What bounded its memory, processes and CPU (a cgroups.Enforcement value; jail.run sets it)."""
    files: tuple[OutFile, ...] = ()
    """The regular files the script left under out/ (sorted by name), within the caps."""
    files_truncated: bool = False
    """Some files under out/ were left out: a cap on their count or total size was reached."""

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
        files = tuple(OutFile(**f) for f in data.get("files", ()))
        return cls(**{**data, "status": Status(data["status"]), "files": files})
