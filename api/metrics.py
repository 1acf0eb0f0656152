"""Prometheus metrics: what the API and the workers count, and GET /metrics.

Several processes count into one exposition through prometheus_client's multiprocess mode
when PROMETHEUS_MULTIPROC_DIR is set (gunicorn's workers, and in the one-container image the
RQ workers too: api/gunicorn.conf.py and docker/supervise.py create it fresh at start).
Without it each process counts in memory (a compose worker serves its own on
PYSANDBOX_WORKER_METRICS_PORT: worker/__main__.py). What Redis holds (queue depth, live
workers) and this process's self-test are read when scraped, by StateCollector.

Labels take few values: outcome and error codes, jail kind, route templates, API key names
(chosen by the operator); never ids or client addresses.
The README's "Operating it" section lists every metric.
"""
import os
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import (REGISTRY, CollectorRegistry, Counter, Gauge, Histogram,
                               generate_latest)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from jail import Outcome

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
UNMATCHED = "unmatched"
"""The route label of a request no route matched (a 404, or a 405 of an unknown method)."""
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


class StateCollector(Collector):
    """Gauges read when scraped from the app's state: its self-test's verdict (when it runs
    scripts itself) and the queue (when it has one, from Redis)."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        selftest, jobs = self.state["selftest"], self.state["jobs"]
        if selftest is not None:
            yield GaugeMetricFamily("pysandbox_selftest_passed", "1 when this API's jail passed "
                                    "its escape self-test", value=int(selftest.passed))
        if jobs is None:
            return
        queue = jobs.metrics_state()
        yield GaugeMetricFamily("pysandbox_queue_up", "1 when Redis answers", value=queue["up"])
        if not queue["up"]:
            return
        yield GaugeMetricFamily("pysandbox_queue_persistent", "1 when Redis keeps an "
                                "append-only file", value=int(queue["persistent"]))
        yield GaugeMetricFamily("pysandbox_workers", "RQ workers registered on the queue",
                                value=queue["workers"])
        family = GaugeMetricFamily("pysandbox_queue_jobs", "Jobs Redis holds, by RQ state",
                                   labels=["state"])
        for name, count in queue["jobs"].items():
            family.add_metric([name], count)
        yield family
        yield from storage_metrics(queue["storage_held"], queue["storage_budget"],
                                   queue["storage_by_client"])


def storage_metrics(held: int, budget: int, by_client: dict[str, int]) -> Iterator[Metric]:
    """The storage budget's gauges: per client by API key name only; clients known by their
    address (keys off, or jobs of keys since removed) are summed as `anonymous`."""
    yield GaugeMetricFamily("pysandbox_storage_held_bytes", "Bytes the jobs hold in Redis "
                            "against the storage budget (reserved or stored)", value=held)
    yield GaugeMetricFamily("pysandbox_storage_budget_bytes", "The storage budget of all "
                            "clients' jobs together (PYSANDBOX_STORAGE_BUDGET_MB)", value=budget)
    family = GaugeMetricFamily("pysandbox_storage_client_held_bytes", "Bytes a client's jobs "
                               "hold in Redis, by API key name", labels=["client"])
    labeled: dict[str, int] = {}
    for client, nbytes in by_client.items():
        kind, _, name = client.partition(":")
        label = name if kind == "key" else ANONYMOUS
        labeled[label] = labeled.get(label, 0) + nbytes
    for label, nbytes in labeled.items():
        family.add_metric([label], nbytes)
    yield family


def exposition() -> bytes:
    """The text format: every process's counts, then the state read now."""
    counted: CollectorRegistry = REGISTRY
    if os.environ.get(MULTIPROC_ENV):
        counted = CollectorRegistry()
        MultiProcessCollector(counted)
    now = CollectorRegistry()
    now.register(StateCollector(current_app.extensions["pysandbox"]))
    return generate_latest(counted) + generate_latest(now)


bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    """The Prometheus text format."""
    return Response(exposition(), content_type=CONTENT_TYPE)


def _started() -> None:
    g.metrics_started = time.perf_counter()


def _answered(response: Response) -> Response:
    route = request.url_rule.rule if request.url_rule is not None else UNMATCHED
    method = request.method if request.method in METHODS else "other"
    REQUESTS.labels(route, method, str(response.status_code), g.get("client") or ANONYMOUS).inc()
    started = g.get("metrics_started")
    if started is not None:
        REQUEST_SECONDS.labels(route, method).observe(time.perf_counter() - started)
    return response


def register(app: Flask, slots: int) -> None:
    """Count every request; serve GET /metrics unless PYSANDBOX_METRICS is false."""
    SLOTS.set(slots)
    app.before_request(_started)
    app.after_request(_answered)
    if app.config["METRICS"]:
        app.register_blueprint(bp)
