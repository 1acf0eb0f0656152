"""Prometheus metrics: what the API and the workers count (GET /metrics is api/metrics.py).

Several processes count into one exposition through prometheus_client's multiprocess mode
when PROMETHEUS_MULTIPROC_DIR is set (gunicorn's workers, and in the one-container image the
RQ workers too: api/gunicorn.conf.py and docker/supervise.py create it fresh at start).
Without it each process counts in memory (a compose worker serves its own on
PYSANDBOX_WORKER_METRICS_PORT: worker/__main__.py).

Labels take few values: outcome and error codes, jail kind, route templates, API key names
(chosen by the operator); never ids or client addresses.
docs/operating.md lists every metric.
"""
from prometheus_client import Counter, Gauge, Histogram

from jail import Outcome

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
RUN_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
MEMORY_BUCKETS_BYTES = tuple(mb * 2**20 for mb in (8, 16, 32, 64, 128, 256, 512, 1024, 2048))

RUNS = Counter("pysandbox_runs", "Runs of a script, by how they ended and the kind of jail",
               ["outcome", "jail"])
RUN_SECONDS = Histogram("pysandbox_run_duration_seconds", "Wall time of a run in its jail",
                        ["jail"], buckets=RUN_BUCKETS_S)
RUN_CPU_SECONDS = Histogram("pysandbox_run_cpu_seconds", "CPU time of a run's processes, "
                            "where the host measures it", buckets=RUN_BUCKETS_S)
RUN_PEAK_MEMORY = Histogram("pysandbox_run_peak_memory_bytes", "The most memory a run held at "
                            "once, where the host measures it", buckets=MEMORY_BUCKETS_BYTES)
QUEUE_WAIT_SECONDS = Histogram("pysandbox_queue_wait_seconds", "From a job's enqueueing to a "
                               "worker starting it", buckets=RUN_BUCKETS_S)
ANONYMOUS = "anonymous"
"""The client label of a request without a valid API key (every request when keys are off)."""
REQUESTS = Counter("pysandbox_http_requests", "HTTP requests answered, by route template, "
                   "method, status and API key name", ["route", "method", "status", "client"])
REQUEST_SECONDS = Histogram("pysandbox_http_request_duration_seconds", "Time to answer an HTTP "
                            "request", ["route", "method"], buckets=RUN_BUCKETS_S)
ERRORS = Counter("pysandbox_http_errors", "Error answers ({\"error\": ...}), by error code: "
                 "refusals (busy, queue_unavailable...), invalid requests, failed runs", ["code"])
WARM_JAILS = Gauge("pysandbox_warm_jails", "Warm jails kept by the processes that run scripts",
                   ["state"], multiprocess_mode="livesum")
SLOTS_IN_USE = Gauge("pysandbox_run_slots_in_use", "The API's run slots held by running "
                     "scripts", multiprocess_mode="livesum")
SLOTS = Gauge("pysandbox_run_slots", "The API's run slots (PYSANDBOX_MAX_CONCURRENT_RUNS)",
              multiprocess_mode="livesum")


def observe_run(outcome: Outcome) -> None:
    """Count one run that ended (in the API or a worker)."""
    RUNS.labels(outcome.status.value, outcome.jail).inc()
    RUN_SECONDS.labels(outcome.jail).observe(outcome.duration_ms / 1000)
    if outcome.cpu_ms is not None:
        RUN_CPU_SECONDS.observe(outcome.cpu_ms / 1000)
    if outcome.peak_memory_mb is not None:
        RUN_PEAK_MEMORY.observe(outcome.peak_memory_mb * 2**20)


def observe_sandbox_error() -> None:
    """Count a run the sandbox itself failed (SandboxError): no jail kind is known."""
    RUNS.labels("sandbox_error", "unknown").inc()


_IDLE_JAILS, _ALL_JAILS = WARM_JAILS.labels("idle"), WARM_JAILS.labels("total")


def observe_warm_jails(idle: int, total: int) -> None:
    """The WarmPool's change hook: this process's idle and total warm jails."""
    _IDLE_JAILS.set(idle)
    _ALL_JAILS.set(total)
SESSIONS_OPEN = Gauge("pysandbox_sessions_open", "Sessions open in this process (the API's; in queue mode "
                      "a worker's)", multiprocess_mode="livesum")
SESSIONS_CREATED = Counter("pysandbox_sessions_created", "Sessions created")
SESSIONS_ENDED = Counter("pysandbox_sessions_ended", "Sessions ended, by reason", ["reason"])
SESSION_CALLS = Counter("pysandbox_session_calls", "Calls to sessions, by how they ended", ["outcome"])
SESSION_CALL_SECONDS = Histogram("pysandbox_session_call_duration_seconds", "Wall time of a session "
                                 "call in its jail", buckets=RUN_BUCKETS_S)
