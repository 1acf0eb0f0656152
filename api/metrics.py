"""GET /metrics and the API's own counting of requests (the metrics are shared/metrics.py's).

What Redis holds (queue depth, live workers) and this process's self-test are read when
scraped, by StateCollector.
"""
import os
import time
from collections.abc import Iterator

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from api.service import Service, service
from shared.metrics import ANONYMOUS, MULTIPROC_ENV, REQUEST_SECONDS, REQUESTS, SLOTS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
UNMATCHED = "unmatched"
"""The route label of a request no route matched (a 404, or a 405 of an unknown method)."""


class StateCollector(Collector):
    """Gauges read when scraped from the app's state: its self-test's verdict (when it runs
    scripts itself) and the queue (when it has one, from Redis)."""

    def __init__(self, state: Service) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        selftest, jobs = self.state.mode.selftest, self.state.jobs
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
        yield GaugeMetricFamily("pysandbox_queue_oldest_job_age_seconds", "How long the oldest "
                                "queued job has waited for a worker (0 when none waits)",
                                value=queue["oldest_queued_s"])
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
    now.register(StateCollector(service()))
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


def register(app: Flask, slots: int, serve: bool) -> None:
    """Count every request; serve GET /metrics if `serve` (PYSANDBOX_METRICS)."""
    SLOTS.set(slots)
    app.before_request(_started)
    app.after_request(_answered)
    if serve:
        app.register_blueprint(bp)
