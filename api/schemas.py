"""The API's bodies, declared once: these pydantic models validate requests and make the OpenAPI document.

Why pydantic plus our own small OpenAPI assembly (api/openapi.py), not flask-openapi3, spectree
or APIFlask: all three own request validation and answer its failures in their own shape and
status (422 with pydantic's error list, or 400 of their own), before the view runs. Our
contract gives 422 to the *script's* faults only, answers a bad request 400 `invalid_request`
in our one error shape, 415 before looking at the body and 413 before parsing it (and again
for a script over a limit that is configuration, not schema), and clamps limits instead of
rejecting them. Bending each library to that takes hooks, overrides and a second place that
describes errors. Here the models are the only declaration: `parse_json()` validates with
them, and `api/openapi.py` takes their JSON Schemas (pydantic emits JSON Schema 2020-12,
which is OpenAPI 3.1's dialect) and adds what no model says: paths, statuses, headers,
examples and links. The interactive page is Swagger UI from the `flask-swagger-ui` wheel.
"""
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from api.errors import invalid
from jail.runinput import IN_NAME_PATTERN, MAX_NAME_CHARS
from shared.settings import DEFAULTS

M = TypeVar("M", bound=BaseModel)
NonBlank = Annotated[str, Field(min_length=1, pattern=r"\S")]


def _integral(value: object) -> object:
    """JSON Schema's integer includes 2.0; strict pydantic would refuse it, 2.5 stays refused."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


PositiveInteger = Annotated[int, Field(gt=0), BeforeValidator(_integral)]


BASE64 = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"


class TextFile(BaseModel):
    """An input file given as text (UTF-8)."""

    model_config = ConfigDict(extra="forbid", strict=True, title="TextFile")

    content: str
    encoding: Literal["utf-8"] = "utf-8"


class Base64File(BaseModel):
    """An input file given as base64 (bad base64 is 400 invalid_file, not invalid_request)."""

    model_config = ConfigDict(extra="forbid", strict=True, title="Base64File")

    content: str = Field(json_schema_extra={"pattern": BASE64})
    encoding: Literal["base64"]


FileContent = TextFile | Base64File


class ExecuteRequest(BaseModel):
    """The body of POST /execute. Limits above the server's maximum are clamped, not refused."""

    model_config = ConfigDict(extra="forbid", strict=True, title="ExecuteRequest")

    script: NonBlank = Field(
        description="Python source defining a top-level `main()` (or `main(input)` when the request "
                    "has an `input`). Over PYSANDBOX_MAX_SCRIPT_BYTES (UTF-8) it is refused with 413.",
        examples=['print("at import")\ndef main():\n    print("in main")\n    return {"answer": 42}'])
    input: Any = Field(
        None, description="Any JSON value. When the key is present (even `null`), `main` is called with it "
                          "as its one argument; absent, `main()` is called. A `main` that cannot take that "
                          "call is 422 `main_signature`. Over PYSANDBOX_MAX_INPUT_BYTES as JSON: 413.")
    stdin: str | None = Field(
        None, description="Text the script (and its child processes) read on standard input; absent, "
                          "standard input is empty. Over PYSANDBOX_MAX_STDIN_BYTES (UTF-8): 413.")
    files: dict[str, str | TextFile | Base64File] | None = Field(
        None, description="Files written into the run's working directory `/tmp` before the script runs: "
                          "name → text, or `{content, encoding}`. A name is a relative path of parts "
                          "(`/`-separated) of 1-255 of `A-Z a-z 0-9 . _ -`, not `.` or `..`, at most 8 "
                          "parts and 1024 characters, not under `out/`; else 400 `invalid_file`. More than "
                          "PYSANDBOX_MAX_FILES files, or more than half the run's `/tmp` in all: 413.",
        examples=[{"data.csv": "a,b\n1,2\n", "raw/logo.png": {"content": "iVBORw0KGgo=",
                                                            "encoding": "base64"}}],
        json_schema_extra={"propertyNames": {"pattern": IN_NAME_PATTERN, "maxLength": MAX_NAME_CHARS}})
    timeout: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = Field(
        None, description=f"Wall-time limit in seconds; default {DEFAULTS.default_timeout_s:g}, clamped to "
                          f"PYSANDBOX_MAX_TIMEOUT_S ({DEFAULTS.max_timeout_s:g}).")
    memory_mb: PositiveInteger | None = Field(
        None, description=f"Memory limit in MiB; default {DEFAULTS.default_memory_mb}, clamped to "
                          f"{DEFAULTS.min_memory_mb}…PYSANDBOX_MAX_MEMORY_MB ({DEFAULTS.max_memory_mb}).")
    callback_url: str | None = Field(
        None, max_length=2048,
        description="Queued runs (`?async=1`) only: when the job ends, its state (as GET /jobs/{job_id} "
                    "answers it) is POSTed here, signed (docs/callbacks.md). Refused with 400 "
                    "`callback_not_allowed` unless the operator allows its host (PYSANDBOX_CALLBACK_HOSTS).",
        examples=["https://hooks.example.com/pysandbox"])


class ExecuteQuery(BaseModel):
    """The query of POST /execute."""

    model_config = ConfigDict(extra="ignore")

    run_async: str = Field(
        "", alias="async", pattern=r"^(|[01]|[tT][rR][uU][eE]|[fF][aA][lL][sS][eE]|[yY][eE][sS]|[nN][oO])$",
        description="`1` (or true/yes) queues the run and answers 202 with the job; `0` (the default) "
                    "runs it now.")

    @property
    def is_async(self) -> bool:
        """Whether the run is queued."""
        return self.run_async.lower() in ("1", "true", "yes")


class OutFile(BaseModel):
    """A file the script wrote under out/."""

    name: str = Field(description="Its path relative to `out/`.", examples=["plot.png"])
    size: int = Field(description="Its size in bytes.")
    media_type: str = Field(description="From the name's extension; `application/octet-stream` if unknown.",
                            examples=["image/png"])
    encoding: Literal["base64"]
    content: str = Field(description="The file's bytes, base64.")


class RunOutput(BaseModel):
    """What a run printed, how long it ran and what it used: in every answer about a run."""

    stdout: str = Field(description="Everything written to fd 1 by the script and its children.")
    stderr: str = Field(description="Everything written to fd 2.")
    output_truncated: bool = Field(description="stdout + stderr went over 1 MiB and were cut there.")
    duration_ms: int = Field(description="Wall time of the run.")
    cpu_ms: int | None = Field(description="CPU time of the run's processes; null if the host cannot say.")
    peak_memory_mb: float | None = Field(
        description="The most memory the run held at once, in MiB; null if the host cannot say.")
    files: list[OutFile] = Field(
        description="The regular files the script left under `out/` (`/tmp/out`), sorted by name; "
                    "symlinks, FIFOs, sockets and devices are skipped.")
    files_truncated: bool = Field(
        description="Some files under `out/` were left out: over PYSANDBOX_MAX_FILES_OUT files or "
                    "PYSANDBOX_MAX_FILES_OUT_BYTES in all.")
    enforcement: str | None = Field(
        description="What bounded this run's memory, processes and CPU (as `enforcement` in GET "
                    "/health); null for a run that never started.",
        examples=["cgroup v2"])


class RunResult(RunOutput):
    """200: main() returned a JSON value."""

    result: Any = Field(description="What main() returned (any JSON value).")


class ErrorDetail(BaseModel):
    """What went wrong: a stable code and a message for people."""

    code: str = Field(description="Stable, machine-readable; see the statuses for the codes each can carry.")
    message: str
    traceback: str | None = Field(
        None, description="main_error only: the script's own frames, never the service's.")
    reason: str | None = Field(None, description="session_ended only: why the session ended.")


class Error(BaseModel):
    """Every error: 4xx and 5xx. Script faults (422) add the run's output."""

    error: ErrorDetail


class RunError(RunOutput):
    """422: the script ran and did not return a JSON value."""

    error: ErrorDetail


class JobQueued(BaseModel):
    """202: the run is queued; poll `Location`."""

    id: str = Field(description="The job's id (a UUID).")
    status: Literal["queued"]


class CallbackState(BaseModel):
    """A job's callback: where it goes and how its delivery went."""

    url: str
    delivery_id: str = Field(description="The PySandbox-Delivery header: the same on every attempt.")
    status: Literal["pending", "delivered", "failed"]
    attempts: int = Field(description="Delivery attempts so far.")
    last_error: str | None = Field(description="Why the last attempt failed (null once delivered).")


class JobState(BaseModel):
    """A queued run, as GET and DELETE /jobs/{job_id} see it.

    `finished` adds the fields of a sync 200; `failed` the error of a sync request (and the
    run's output when the script ran); `canceled` the error `canceled` (and the output the
    run had made, when it was canceled while running). A session's queued call adds `session`."""

    id: str
    status: Literal["queued", "running", "finished", "failed", "canceled"]
    request_id: str | None = Field(
        description="The X-Request-ID of the POST that queued the job (null for jobs queued before ids "
                    "were kept).")
    worker: str | None = Field(
        None, description="The worker that took the job: `<host name>.<pid>.<token>` (null while queued, "
                    "and for a session's call, which runs where its session lives).")
    result: Any = Field(None, description="finished: what main() returned.")
    error: ErrorDetail | None = Field(None, description="failed and canceled: why.")
    stdout: str | None = None
    stderr: str | None = None
    output_truncated: bool | None = None
    duration_ms: int | None = None
    cpu_ms: int | None = None
    peak_memory_mb: float | None = None
    files: list[OutFile] | None = None
    files_truncated: bool | None = None
    enforcement: str | None = None
    callback: CallbackState | None = Field(None, description="When the job was queued with a `callback_url`.")
    session: "SessionState | None" = Field(
        None, description="A session's queued call, once it ended: the session's state then.")


class WarmJails(BaseModel):
    """Warm jails kept ready in this process."""

    size: int
    idle: int


class MemoryHealth(BaseModel):
    """The memory runs are admitted against (jail/admission.py), in bytes."""

    total_bytes: int = Field(description="What this service may use: its cgroup's limit, else the "
                                         "host's memory, else PYSANDBOX_MEMORY_MB.")
    source: str = Field(description="Where total_bytes comes from.")
    base_bytes: int = Field(description="Held back for the parts that run no jail (nginx, "
                                        "supervisor, gunicorn's master, redis).")
    standing_bytes: int = Field(description="What the processes that run jails and their warm jails "
                                            "hold, as they registered it.")
    runs_bytes: int = Field(description="The memory limits of the runs in flight (with the "
                                        "watchdog's slack where no cgroup bounds them).")
    runs: int = Field(description="Runs in flight.")
    free_bytes: int = Field(description="What a new run's limit may take now.")
    largest_run_bytes: int = Field(description="The largest memory limit a run may ask for "
                                               "(PYSANDBOX_MAX_MEMORY_MB, with slack where it applies).")
    warning: str | None = Field(None, description="Set when not even one run at the largest limit "
                                                  "can fit beside what the service holds.")


class Health(BaseModel):
    """GET /health: 200 when scripts can run, else 503 with the reason."""

    status: Literal["ok", "unavailable"]
    enforcement: str | None = Field(
        None, description="What bounds each run here: `cgroup v2`, `cgroup v2 (user namespace)`, "
                          "`cgroup v1` or `rlimits + watchdog` (absent on an API that only enqueues).")
    selftest: dict[str, Any] | None = Field(
        None, description="The startup self-test: `passed`, `failures`, `degraded`.")
    warm_jails: WarmJails | None = None
    memory: MemoryHealth | None = Field(
        None, description="Admission by memory: runs start only while their limits fit.")
    sessions: dict[str, int] | None = Field(
        None, description="Sessions: `open`, and the caps `max` and `max_per_client` (absent on an API "
                          "that only enqueues).")
    queue: dict[str, Any] | None = Field(
        None, description="Redis, workers, queued jobs and `storage` (`held_bytes` of `budget_bytes`), "
                    "when a queue is set; `persistent`: whether Redis "
                    "keeps its jobs across a restart (an append-only file).")


class SessionRequest(BaseModel):
    """The body of POST /sessions (optional). Limits above the server's maximum are clamped."""

    model_config = ConfigDict(extra="forbid", strict=True, title="SessionRequest")

    memory_mb: PositiveInteger | None = Field(
        None, description="The session's memory limit in MiB, for its whole life (every call together); "
                          "clamped as a run's `memory_mb`.")
    idle_timeout_s: float | None = Field(
        None, gt=0, allow_inf_nan=False,
        description="The session ends after this long without a call (PYSANDBOX_SESSION_IDLE_TIMEOUT_S "
                    "by default, clamped to PYSANDBOX_MAX_SESSION_IDLE_TIMEOUT_S).")
    max_lifetime_s: float | None = Field(
        None, gt=0, allow_inf_nan=False,
        description="The session ends this long after it was created (PYSANDBOX_SESSION_LIFETIME_S by "
                    "default, clamped to PYSANDBOX_MAX_SESSION_LIFETIME_S).")


class SessionUsage(BaseModel):
    """What a session has used so far."""

    calls: int
    cpu_ms: int | None
    peak_memory_mb: float | None = Field(description="The session's memory peak so far; null once ended "
                                                     "or where the host cannot say.")


class SessionState(BaseModel):
    """A session, as POST /sessions, GET /sessions/{session_id} and its calls describe it."""

    id: str
    state: str = Field(description="`open` or `ended`.", examples=["open"])
    reason: str | None = Field(description="Why it ended (see 410 `session_ended`); null while open.")
    memory_mb: int
    idle_timeout_s: float
    max_lifetime_s: float
    created_at: float = Field(description="Unix time.")
    expires_at: float = Field(description="Unix time when it ends unless a call comes first: idle or "
                                          "lifetime, whichever is sooner.")
    usage: SessionUsage


JobState.model_rebuild()  # its `session` is a SessionState


class SessionRunResult(RunResult):
    """200 of a session's call: as POST /execute's, with the session's state."""

    session: SessionState


class SessionRunError(RunError):
    """422 of a session's call: as POST /execute's, with the session's state (a call can end it)."""

    session: SessionState


class Probe(BaseModel):
    """GET /livez, /readyz, /startupz: 200, or 503 with the reason (api/probes.py)."""

    status: Literal["ok", "unavailable"]
    reason: Literal["draining", "redis_unreachable", "selftest_failed", "warming"] | None = Field(
        description="Why it is 503: `draining` (told to stop), `redis_unreachable` (an API that only "
                    "enqueues cannot reach its queue), `selftest_failed`, `warming` (the warm jails are "
                    "not all ready yet); null on a 200.")


def parse_json(model: type[M], data: bytes) -> M:
    """The body validated by `model`; 400 invalid_request saying what is wrong."""
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        raise invalid(describe(exc)) from None


def parse_query(model: type[M], args: dict[str, str]) -> M:
    """The query string validated by `model`; 400 invalid_request saying what is wrong."""
    try:
        return model.model_validate(args)
    except ValidationError as exc:
        raise invalid(describe(exc)) from None


def describe(exc: ValidationError) -> str:
    """One line for people: each wrong field and why."""
    errors = exc.errors(include_url=False)
    if any(e["type"] == "json_invalid" for e in errors):
        return "the body is not valid JSON (or not UTF-8)"
    if any(e["type"] == "model_type" for e in errors):
        return "the body must be a JSON object"
    unknown = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden")
    parts = [f"unknown field(s) {unknown}"] if unknown else []
    parts += [f"'{'.'.join(map(str, e['loc']))}': {e['msg']}"
              for e in errors if e["type"] != "extra_forbidden"]
    return "; ".join(parts)

