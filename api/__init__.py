"""PySandbox's HTTP API: create_app() builds the Flask app (gunicorn: "api:create_app()")."""
import os
from pathlib import Path
from typing import Any

from flask import Flask
from flask.json.provider import DefaultJSONProvider

from api import clients, docs, errors, logs, metrics, playground, ratelimits, request_ids, routes
from api.capacity import Capacity
from api.config import load_config
from api.jobs import Budget, JobQueue
from api.requests import files_in_cap
from jail import Limits, start_warm_pool
from jail.admission import open_ledger
from jail.limits import MIB
from jail.selftest import self_test
from worker.storage import JOB_OVERHEAD_BYTES, worst_result_bytes


def max_body_bytes(config: dict[str, Any]) -> int:
    """The largest body: the script and stdin as JSON strings (escapes: 2 bytes a byte), the
    input, the files as base64 (4/3) with their names, and room for the rest."""
    return (2 * (config["MAX_SCRIPT_BYTES"] + config["MAX_STDIN_BYTES"]) + config["MAX_INPUT_BYTES"]
            + 4 * files_in_cap(config) // 3 + config["MAX_FILES"] * 2048 + 4096)


def newcomer_slots(slots: int) -> int:
    """Run slots beyond `slots` for clients that hold none: one where slots outnumber cores
    (api/capacity.py, "A slot for a newcomer")."""
    return 1 if slots > (os.cpu_count() or 1) else 0


def storage_budget(config: dict[str, Any]) -> Budget:
    """The storage budget; ValueError unless a client's budget holds the largest job (the
    largest body as input, and the largest result the caps allow) within the total's."""
    budget = Budget(config["STORAGE_BUDGET_MB"] * MIB, config["STORAGE_BUDGET_PER_CLIENT_MB"] * MIB)
    largest = max_body_bytes(config) + worst_result_bytes(Limits(
        max_output_bytes=config["MAX_OUTPUT_BYTES"], max_result_bytes=config["MAX_RESULT_BYTES"],
        max_files_out=config["MAX_FILES_OUT"], max_files_out_bytes=config["MAX_FILES_OUT_BYTES"])) \
        + JOB_OVERHEAD_BYTES
    if not largest <= budget.client_bytes <= budget.total_bytes:
        raise ValueError(f"PYSANDBOX_STORAGE_BUDGET_PER_CLIENT_MB must hold the largest job "
                         f"({largest / MIB:.1f} MiB with these caps) and be at most "
                         "PYSANDBOX_STORAGE_BUDGET_MB")
    if budget.total_bytes > config["REDIS_MEMORY_MB"] * MIB:
        raise ValueError("PYSANDBOX_STORAGE_BUDGET_MB must fit in PYSANDBOX_REDIS_MEMORY_MB")
    return budget


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """The app, configured from PYSANDBOX_* variables (and REDIS_URL), after a self-test of the jail."""
    app = Flask(__name__)
    app.config.update(load_config(test_config))
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes(app.config)
    assert isinstance(app.json, DefaultJSONProvider)
    app.json.sort_keys = False
    logs.setup()
    errors.register(app)
    request_ids.register(app)
    logs.register(app)
    keys = clients.load_keys(app.config)
    clients.register(app)
    ratelimits.register(app, app.config["REDIS_URL"], keys)
    app.register_blueprint(routes.bp)
    app.register_blueprint(docs.bp)
    app.register_blueprint(playground.bp)
    if app.config["EXECUTE_VIA_QUEUE"] and not app.config["REDIS_URL"]:
        raise ValueError("PYSANDBOX_EXECUTE_VIA_QUEUE needs REDIS_URL")
    jobs = JobQueue(app.config["REDIS_URL"], app.config["MAX_QUEUED_JOBS"],
                    app.config["MAX_QUEUED_JOBS_PER_CLIENT"], app.config["RESULT_TTL_S"],
                    app.config["RETRY_AFTER_S"], storage_budget(app.config)) \
        if app.config["REDIS_URL"] else None
    runs_here = not app.config["EXECUTE_VIA_QUEUE"]
    memory = None
    if runs_here:
        start_warm_pool(app.config["WARM_JAILS"], app.config["TMP_MB"], metrics.observe_warm_jails)
        memory = open_ledger(Path(app.config["MEMORY_LEDGER"]), app.config["MEMORY_MB"],
                             app.config["WARM_JAILS"], app.config["DEFAULT_MEMORY_MB"],
                             app.config["MAX_MEMORY_MB"])
    app.extensions["pysandbox"] = {
        "capacity": Capacity(app.config["MAX_CONCURRENT_RUNS"], app.config["QUEUE_WAIT_S"],
                             app.config["RETRY_AFTER_S"], app.config["FAIR_SHARING"],
                             reserved=newcomer_slots(app.config["MAX_CONCURRENT_RUNS"]),
                             memory=memory),
        "keys": keys,
        # An API that only enqueues never runs the jail, and needs no privileges for it.
        "selftest": None if app.config["EXECUTE_VIA_QUEUE"] else self_test(),
        "jobs": jobs,
    }
    metrics.register(app, app.config["MAX_CONCURRENT_RUNS"] if runs_here else 0)
    return app
