"""The service's bodies as pydantic models, written to match its /openapi.json.

tests/test_client.py compares each model's JSON Schema (names, types, required fields) with
the running service's document, so a change on either side fails the tests. Answers are
parsed leniently (unknown fields ignored): a newer service still talks to an older client.
"""
import base64
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class TextFile(BaseModel):
    """An input file given as text (UTF-8)."""

    model_config = ConfigDict(extra="forbid")

    content: str
    encoding: Literal["utf-8"] = "utf-8"


class Base64File(BaseModel):
    """An input file given as base64."""

    model_config = ConfigDict(extra="forbid")

    content: str
    encoding: Literal["base64"]

    @classmethod
    def of(cls, data: bytes) -> "Base64File":
        """The file holding these bytes."""
        return cls(content=base64.b64encode(data).decode("ascii"), encoding="base64")


class ExecuteRequest(BaseModel):
    """The body of POST /execute; unset fields are left out (the service's defaults apply)."""

    model_config = ConfigDict(extra="forbid")

    script: str
    input: Any = None
    stdin: str | None = None
    files: dict[str, str | TextFile | Base64File] | None = None
    timeout: float | None = None
    memory_mb: int | None = None
    callback_url: str | None = None


class OutFile(BaseModel):
    """A file the script left under out/."""

    name: str
    size: int
    media_type: str
    encoding: Literal["base64"]
    content: str

    @property
    def data(self) -> bytes:
        """The file's bytes."""
        return base64.b64decode(self.content)


def save_files(files: list[OutFile], directory: Path) -> list[Path]:
    """Write files under directory (made if needed), by their names; the paths written."""
    root = directory.resolve()
    written = []
    for file in files:
        path = (root / file.name).resolve()
        if not path.is_relative_to(root):
            raise ValueError(f"refusing to write {file.name!r} outside {root}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(file.data)
        written.append(path)
    return written


class RunOutput(BaseModel):
    """What a run printed, how long it ran and what it used."""

    stdout: str
    stderr: str
    output_truncated: bool
    duration_ms: int
    cpu_ms: int | None
    peak_memory_mb: float | None
    files: list[OutFile]
    files_truncated: bool
    enforcement: str | None
    """What bounded the run's memory, processes and CPU (as /health names it)."""


class RunResult(RunOutput):
    """A run whose main() returned: `result` is what it returned."""

    result: Any


class ErrorDetail(BaseModel):
    """What went wrong: a stable code and a message for people."""

    code: str
    message: str
    traceback: str | None = None
    reason: str | None = None
    """session_ended only: why the session ended."""


class Error(BaseModel):
    """Every error answer of the service."""

    error: ErrorDetail


class RunError(RunOutput):
    """A 422 answer: the script ran and did not return a JSON value."""

    error: ErrorDetail


JobStatus = Literal["queued", "running", "finished", "failed", "canceled"]


class JobQueued(BaseModel):
    """The answer of POST /execute?async=1."""

    id: str
    status: Literal["queued"]


class CallbackState(BaseModel):
    """A job's callback: where it goes and how its delivery went."""

    url: str
    delivery_id: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_error: str | None


class JobState(BaseModel):
    """A job as GET and DELETE /jobs/{job_id} see it; the run's fields once it ran."""

    id: str
    status: JobStatus
    request_id: str | None
    worker: str | None = None
    result: Any = None
    error: ErrorDetail | None = None
    stdout: str | None = None
    stderr: str | None = None
    output_truncated: bool | None = None
    duration_ms: int | None = None
    cpu_ms: int | None = None
    peak_memory_mb: float | None = None
    files: list[OutFile] | None = None
    files_truncated: bool | None = None
    enforcement: str | None = None
    callback: CallbackState | None = None
    session: "SessionState | None" = None
    """A session's queued call, once it ended: the session's state then."""

    @property
    def ended(self) -> bool:
        """Whether the job will change no more."""
        return self.status in ("finished", "failed", "canceled")


class SessionUsage(BaseModel):
    """What a session has used so far."""

    calls: int
    cpu_ms: int | None
    peak_memory_mb: float | None


class SessionState(BaseModel):
    """A session, as POST /sessions, GET /sessions/{session_id} and its calls describe it."""

    id: str
    state: str
    """`open` or `ended`."""
    reason: str | None
    """Why it ended; None while open."""
    memory_mb: int
    idle_timeout_s: float
    max_lifetime_s: float
    created_at: float
    expires_at: float
    usage: SessionUsage


JobState.model_rebuild()  # its `session` is a SessionState


class SessionRunResult(RunResult):
    """A session's call whose code returned: as a run's result, with the session's state."""

    session: SessionState
