"""The service's settings: one typed object, read once from the environment by each process.

Each field is the variable PYSANDBOX_<FIELD IN CAPITALS> (REDIS_URL without the prefix, as every
Redis client and host expects it); values are JSON where it matters (`PYSANDBOX_QUEUE_WAIT_S=0.5`,
`PYSANDBOX_FAIR_SHARING=false`), else the string itself. A value of the wrong type stops the
start naming the variable; an unknown PYSANDBOX_* name is warned about with the nearest known
one (`unknown_names`). A run's defaults are the jail's (jail.Limits), written once there.
docs/configuration.md's table is checked against these fields (tests/unit/test_settings.py).
"""
import difflib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from jail import Limits
from jail.admission import MemoryLedger, open_ledger
from jail.limits import MIB
from shared.logs import LogFormat

PREFIX = "PYSANDBOX_"
UNPREFIXED = frozenset({"REDIS_URL"})
"""Fields read without the prefix."""
OTHER_NAMES = frozenset({
    "PYSANDBOX_NSJAIL", "PYSANDBOX_JAIL_SITE", "PYSANDBOX_CGROUP_KEEPER",  # jail/paths.py
    "PYSANDBOX_USERNS_CGROUPS",  # the container's entrypoint (docker/entrypoint.sh)
    "PYSANDBOX_WORKERS", "PYSANDBOX_STOP_TIMEOUT_S",  # the container's supervisor (docker/supervise.py)
    # docker-compose.yml's and the Makefile's, and the tests':
    "PYSANDBOX_IMAGE", "PYSANDBOX_WORKER_IMAGE", "PYSANDBOX_EXTRA_CA_CERTS", "PYSANDBOX_REDIS_PASSWORD",
    "PYSANDBOX_PORT", "PYSANDBOX_CHROMIUM", "PYSANDBOX_VM_CACHE", "PYSANDBOX_VM_ROUNDS",
    "PYSANDBOX_SECRET_PROBE",
})
"""PYSANDBOX_* variables that are not the service's settings but are no typos either."""
RUN = Limits()
"""The jail's defaults for a run."""
log = logging.getLogger(__name__)


class Settings(BaseModel):
    """Every setting of the API and the workers."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    default_timeout_s: float = RUN.timeout_s
    max_timeout_s: float = 30.0
    default_memory_mb: int = RUN.memory_mb
    min_memory_mb: int = 64
    max_memory_mb: int = 1024
    max_script_bytes: int = 256 * 1024
    max_output_bytes: int = RUN.max_output_bytes
    max_result_bytes: int = RUN.max_result_bytes
    max_pids: int = RUN.max_pids
    tmp_mb: int = RUN.tmp_mb
    max_input_bytes: int = 1024 * 1024
    max_stdin_bytes: int = 1024 * 1024
    max_files: int = 64
    max_files_out: int = RUN.max_files_out
    max_files_out_bytes: int = RUN.max_files_out_bytes
    max_concurrent_runs: int = Field(default_factory=lambda: max(2, 2 * (os.cpu_count() or 1)))
    warm_jails: int = Field(default_factory=lambda given: given.get("max_concurrent_runs", 0))
    """Default: one per run slot."""
    queue_wait_s: float = 1.0
    retry_after_s: int = 1
    redis_url: str = ""
    execute_via_queue: bool = False
    max_queued_jobs: int = 100
    max_queued_jobs_per_client: int = Field(
        default_factory=lambda given: max(1, given.get("max_queued_jobs", 0) // 4))
    """Default: a quarter of max_queued_jobs."""
    result_ttl_s: int = 3600
    redis_memory_mb: int = 512
    storage_budget_mb: int = Field(default_factory=lambda given: 3 * given.get("redis_memory_mb", 0) // 4)
    """Default: three quarters of redis_memory_mb."""
    storage_budget_per_client_mb: int = Field(
        default_factory=lambda given: given.get("storage_budget_mb", 0) // 3)
    """Default: a third of storage_budget_mb."""
    metrics: bool = True
    worker_metrics_port: int = 0
    worker_alive_file: str = ""
    """A file the worker touches every ALIVE_EVERY_S once its self-test passed (worker/__main__.py):
    Kubernetes' exec liveness and startup probes look at its age."""
    api_keys: str = ""
    api_keys_file: str = ""
    trusted_proxies: int = 0
    rate_limit: str = ""
    fair_sharing: bool = True
    memory_mb: int = 0
    """The memory runs are admitted against (jail/admission.py); 0: detect it."""
    memory_ledger: str = "/dev/shm/pysandbox-memory"
    callback_hosts: str = ""
    """Where callbacks may go: host names and CIDRs, comma-separated; empty: callbacks are off."""
    callback_secret: str = ""
    """The key callbacks are signed with (HMAC-SHA256)."""
    callback_timeout_s: float = 5.0
    callback_backoff_s: float = 1.0
    """The wait before a callback's first retry; doubled at each retry, up to a minute."""
    callback_retry_s: float = 600.0
    """How long after the job ended a failing callback is still retried."""
    log_format: LogFormat = "json"
    """json lines for a log system, or text for a terminal."""
    max_sessions: int = 8
    """Sessions open at once in the API process (each holds its memory limit while open)."""
    max_sessions_per_client: int = 4
    session_idle_timeout_s: float = 600.0
    max_session_idle_timeout_s: float = 3600.0
    session_lifetime_s: float = 3600.0
    max_session_lifetime_s: float = 6 * 3600.0
    spare_session: bool = True
    """Keep a session started ahead with the default limits (api/sessions.py)."""
    session_record_ttl_s: float = 3600.0
    """How long an ended session's record is kept (410 session_ended; 404 afterwards)."""

    @field_validator("log_format", mode="before")
    @classmethod
    def _any_case(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    def session_limits(self, memory_mb: int | None, idle_timeout_s: float | None,
                       lifetime_s: float | None) -> tuple[Limits, float, float]:
        """A session's limits (memory clamped as a run's), idle timeout and lifetime, clamped."""
        limits = self.run_limits(None, memory_mb)
        idle = min(idle_timeout_s or self.session_idle_timeout_s, self.max_session_idle_timeout_s)
        return limits, idle, min(lifetime_s or self.session_lifetime_s, self.max_session_lifetime_s)

    def memory_ledger_for(self, warm_jails: int) -> MemoryLedger:
        """This process's memory ledger (jail/admission.py), holding warm_jails warm jails."""
        return open_ledger(Path(self.memory_ledger), self.memory_mb, warm_jails,
                           self.default_memory_mb, self.max_memory_mb)

    def files_in_cap(self) -> int:
        """The input files' total size: half the run's /tmp, the other half the script's room."""
        return self.tmp_mb * MIB // 2

    def max_body_bytes(self) -> int:
        """The largest request body: the script and stdin as JSON strings (escapes: 2 bytes a
        byte), the input, the files as base64 (4/3) with their names, and room for the rest."""
        return (2 * (self.max_script_bytes + self.max_stdin_bytes) + self.max_input_bytes
                + 4 * self.files_in_cap() // 3 + self.max_files * 2048 + 4096)

    def run_limits(self, timeout_s: float | None, memory_mb: int | None) -> Limits:
        """A run's limits: the asked (or default) time and memory clamped to their bounds."""
        timeout = timeout_s or self.default_timeout_s
        memory = memory_mb or self.default_memory_mb
        return Limits(
            timeout_s=float(min(timeout, self.max_timeout_s)),
            memory_mb=int(min(max(memory, self.min_memory_mb), self.max_memory_mb)),
            max_pids=self.max_pids, max_output_bytes=self.max_output_bytes,
            max_result_bytes=self.max_result_bytes, tmp_mb=self.tmp_mb,
            max_files_out=self.max_files_out, max_files_out_bytes=self.max_files_out_bytes)


DEFAULTS = Settings()
"""The settings when no variable is set."""


def variable(field: str) -> str:
    """The environment variable of a field."""
    name = field.upper()
    return name if name in UNPREFIXED else PREFIX + name


VARIABLES = {variable(field): field for field in Settings.model_fields}


def _value(raw: str) -> Any:
    """A variable's value: its JSON (5, 0.5, true), else the string itself."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


DERIVED = frozenset({"warm_jails", "max_queued_jobs_per_client", "storage_budget_mb",
                     "storage_budget_per_client_mb"})
"""Settings whose default depends on others: a negative value asks for that default too."""


def load(overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """The settings: defaults, then the environment, then `overrides` (by field name in capitals,
    e.g. {"MAX_TIMEOUT_S": 2}); ValueError naming the variable of a value of the wrong type."""
    environ = os.environ if environ is None else environ
    given = {field: _value(environ[name]) for name, field in VARIABLES.items() if name in environ}
    given.update({name.lower(): value for name, value in (overrides or {}).items()})
    for field in DERIVED & given.keys():
        if type(given[field]) is int and given[field] < 0:
            del given[field]
    try:
        return Settings(**given)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = variable(str(error["loc"][0])) if error["loc"] else "a PYSANDBOX_ variable"
        raise ValueError(f"{name}: {error['msg']} (got {error.get('input')!r})") from None


def unknown_names(environ: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """PYSANDBOX_* variables that nothing reads, each with the nearest known name (or None)."""
    environ = os.environ if environ is None else environ
    known = {name.removeprefix(PREFIX) for name in set(VARIABLES) | OTHER_NAMES}
    return {name: next((PREFIX + near for near in difflib.get_close_matches(
                name.removeprefix(PREFIX), known, n=1, cutoff=0.7)), None)
            for name in sorted(environ) if name.startswith(PREFIX) and name.removeprefix(PREFIX) not in known}


def warn_unknown(environ: Mapping[str, str] | None = None) -> None:
    """Log a warning for each PYSANDBOX_* variable that nothing reads (a typo, most likely)."""
    for name, nearest in unknown_names(environ).items():
        hint = f"; did you mean {nearest}?" if nearest else ""
        log.warning("%s is not a setting of this service and is ignored%s", name, hint)
