"""Service settings: these defaults, overridden by PYSANDBOX_<NAME> environment variables.

REDIS_URL is read without the prefix, as every Redis client and host expects it.
"""
import os
from typing import Any

DEFAULTS: dict[str, object] = {
    "DEFAULT_TIMEOUT_S": 5.0,
    "MAX_TIMEOUT_S": 30.0,
    "DEFAULT_MEMORY_MB": 256,
    "MIN_MEMORY_MB": 64,
    "MAX_MEMORY_MB": 1024,
    "MAX_SCRIPT_BYTES": 256 * 1024,
    "MAX_OUTPUT_BYTES": 1024 * 1024,
    "MAX_RESULT_BYTES": 1024 * 1024,
    "MAX_PIDS": 32,
    "TMP_MB": 16,
    "MAX_INPUT_BYTES": 1024 * 1024,
    "MAX_STDIN_BYTES": 1024 * 1024,
    "MAX_FILES": 64,
    "MAX_FILES_OUT": 16,
    "MAX_FILES_OUT_BYTES": 8 * 1024 * 1024,
    "MAX_CONCURRENT_RUNS": max(2, 2 * (os.cpu_count() or 1)),
    "WARM_JAILS": -1,
    "QUEUE_WAIT_S": 1.0,
    "RETRY_AFTER_S": 1,
    "REDIS_URL": "",
    "EXECUTE_VIA_QUEUE": False,
    "MAX_QUEUED_JOBS": 100,
    "MAX_QUEUED_JOBS_PER_CLIENT": -1,
    "RESULT_TTL_S": 3600,
    "REDIS_MEMORY_MB": 512,
    "STORAGE_BUDGET_MB": -1,
    "STORAGE_BUDGET_PER_CLIENT_MB": -1,
    "METRICS": True,
    "WORKER_METRICS_PORT": 0,
    "API_KEYS": "",
    "API_KEYS_FILE": "",
    "TRUSTED_PROXIES": 0,
    "RATE_LIMIT": "",
    "FAIR_SHARING": True,
    "MEMORY_MB": 0,
    "MEMORY_LEDGER": "/dev/shm/pysandbox-memory",
}
"""Each is documented in the README's configuration table."""


def load_config(overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Defaults, then PYSANDBOX_* from the environment (JSON values), then explicit overrides."""
    from flask import Config

    config = Config(".")
    config.from_mapping(DEFAULTS)
    config.from_prefixed_env("PYSANDBOX")
    config["REDIS_URL"] = os.environ.get("REDIS_URL", config["REDIS_URL"])
    config.update(overrides or {})
    if config["WARM_JAILS"] < 0:  # the default: one warm jail per run slot
        config["WARM_JAILS"] = config["MAX_CONCURRENT_RUNS"]
    if config["MAX_QUEUED_JOBS_PER_CLIENT"] < 0:  # the default: a quarter of the queue
        config["MAX_QUEUED_JOBS_PER_CLIENT"] = max(1, config["MAX_QUEUED_JOBS"] // 4)
    if config["STORAGE_BUDGET_MB"] < 0:  # the default: three quarters of Redis's memory
        config["STORAGE_BUDGET_MB"] = 3 * config["REDIS_MEMORY_MB"] // 4
    if config["STORAGE_BUDGET_PER_CLIENT_MB"] < 0:  # the default: a third of the budget
        config["STORAGE_BUDGET_PER_CLIENT_MB"] = config["STORAGE_BUDGET_MB"] // 3
    for name, default in DEFAULTS.items():
        if not isinstance(config[name], type(default)) and not (
                isinstance(default, float) and isinstance(config[name], int)):
            raise ValueError(f"PYSANDBOX_{name} must be a {type(default).__name__}")
    return dict(config)
