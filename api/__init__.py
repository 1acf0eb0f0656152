"""PySandbox's HTTP API: create_app() builds the Flask app (gunicorn: "api:create_app()")."""
import atexit
import os
import threading
from collections.abc import Mapping
from typing import Any

from flask import Flask
from flask.json.provider import DefaultJSONProvider

from api import (
    clients,
    docs,
    errors,
    logs,
    metrics,
    playground,
    probes,
    ratelimits,
    request_ids,
    routes,
    sessions,
)
from api.capacity import Capacity
from api.job_queue import Budget, JobQueue
from api.mcp_endpoint import McpEndpoint
from api.modes import EnqueueOnly, RunHere, RunMode
from api.service import EXTENSION, Service
from jail import Sandbox
from jail.limits import MIB
from shared.callbacks import Destinations
from shared.metrics import observe_warm_jails
from shared.settings import Settings, load, warn_unknown
from shared.storage import JOB_OVERHEAD_BYTES, worst_result_bytes


def newcomer_slots(slots: int) -> int:
    """Run slots beyond `slots` for clients that hold none: one where slots outnumber cores
    (api/capacity.py, "A slot for a newcomer")."""
    return 1 if slots > (os.cpu_count() or 1) else 0


def storage_budget(settings: Settings) -> Budget:
    """The storage budget; ValueError unless a client's budget holds the largest job (the
    largest body as input, and the largest result the caps allow) within the total's."""
    budget = Budget(settings.storage_budget_mb * MIB, settings.storage_budget_per_client_mb * MIB)
    largest = settings.max_body_bytes() + worst_result_bytes(settings.run_limits(None, None)) \
        + JOB_OVERHEAD_BYTES
    if not largest <= budget.client_bytes <= budget.total_bytes:
        raise ValueError(f"PYSANDBOX_STORAGE_BUDGET_PER_CLIENT_MB must hold the largest job "
                         f"({largest / MIB:.1f} MiB with these caps) and be at most "
                         "PYSANDBOX_STORAGE_BUDGET_MB")
    if budget.total_bytes > settings.redis_memory_mb * MIB:
        raise ValueError("PYSANDBOX_STORAGE_BUDGET_MB must fit in PYSANDBOX_REDIS_MEMORY_MB")
    return budget


def run_mode(settings: Settings, jobs: JobQueue | None) -> RunMode:
    """EnqueueOnly with PYSANDBOX_EXECUTE_VIA_QUEUE (it needs the queue), else RunHere: a
    sandbox with the warm jails, the run slots, and the jail's self-test."""
    if settings.execute_via_queue:
        if jobs is None:
            raise ValueError("PYSANDBOX_EXECUTE_VIA_QUEUE needs REDIS_URL")
        return EnqueueOnly(jobs, settings.queue_wait_s)
    warmed = threading.Event()  # once every warm jail was ready at the same time: GET /startupz

    def on_change(idle: int, size: int) -> None:
        observe_warm_jails(idle, size)
        if idle >= size:
            warmed.set()

    if settings.warm_jails == 0:
        warmed.set()
    sandbox = Sandbox(settings.warm_jails, settings.tmp_mb, on_change=on_change)
    memory = settings.memory_ledger_for(settings.warm_jails)
    capacity = Capacity(settings.max_concurrent_runs, settings.queue_wait_s, settings.retry_after_s,
                        settings.fair_sharing, reserved=newcomer_slots(settings.max_concurrent_runs),
                        memory=memory)
    return RunHere(sandbox, capacity, jobs, warmed)


def open_sessions(settings: Settings, mode: RunMode) -> sessions.Sessions | sessions.QueueSessions:
    """Sessions where this process runs jails, their memory in its ledger, all ended when it
    stops (a graceful stop: gunicorn's worker exits); in a mode that only enqueues, the
    workers' sessions, routed through the queue's Redis."""
    if isinstance(mode, EnqueueOnly):
        return sessions.QueueSessions(settings, mode.jobs.redis)
    opened = sessions.Sessions(settings, mode.capacity.memory, None if mode.jobs is None else mode.jobs.redis)
    atexit.register(opened.close)
    return opened


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """The app, configured from PYSANDBOX_* variables (and REDIS_URL) and then `test_config` (by
    setting name, e.g. {"MAX_TIMEOUT_S": 2}), after a self-test of the jail."""
    settings = load(test_config)
    logs.setup(settings.log_format)
    warn_unknown()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes()
    assert isinstance(app.json, DefaultJSONProvider)
    app.json.sort_keys = False
    errors.register(app)
    request_ids.register(app)
    logs.register(app)
    Destinations.of(settings)  # a bad PYSANDBOX_CALLBACK_HOSTS, or hosts without a secret, stops the start
    keys = clients.load_keys(settings)
    clients.register(app, settings.trusted_proxies)
    ratelimits.register(app, settings.redis_url, settings.rate_limit, keys)
    app.register_blueprint(routes.bp)
    app.register_blueprint(probes.bp)
    app.register_blueprint(docs.bp)
    app.register_blueprint(playground.bp)
    app.register_blueprint(sessions.bp)
    jobs = JobQueue(settings.redis_url, settings.max_queued_jobs, settings.max_queued_jobs_per_client,
                    settings.result_ttl_s, storage_budget(settings)) \
        if settings.redis_url else None
    mode = run_mode(settings, jobs)
    app.extensions[EXTENSION] = found = Service(settings=settings, keys=keys, mode=mode, jobs=jobs,
                                                sessions=open_sessions(settings, mode))
    found.mcp = McpEndpoint(found, settings.max_body_bytes())
    metrics.register(app, mode.capacity.slots if isinstance(mode, RunHere) else 0, settings.metrics)
    return app
