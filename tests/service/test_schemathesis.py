"""schemathesis against the real service (gunicorn, redis-server, a worker, real jails): every
operation of /openapi.json, every one of schemathesis' checks (schemathesis.toml says which
two are tuned and why), with keys off (the default) and on, and stateful runs through the document's links."""
import hashlib
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from shared.settings import DEFAULTS
from tests.support.servers import REPO, gunicorn, redis_server, workers

MAX_EXAMPLES = 40
"""Per operation and phase: about 600 cases, under a minute on 2 cores (most scripts are
generated text that fails to compile, answered in milliseconds)."""


KEY = "schemathesis-" + "k" * 32
"""With API keys on, as a public deployment runs: schemathesis sends this key in both headers
(else it fills X-API-Key with data of its own), and its ignored_auth check sends requests
without it and with a wrong one, which must be refused."""


def wait_started(url: str) -> None:
    """Until /startupz is 200 (the warm jails are up): before that its 503 `warming` is the
    contract's answer, which schemathesis' server-error check would count as a failure."""
    deadline = time.monotonic() + 60
    while requests.get(f"{url}/startupz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the service never finished starting"
        time.sleep(0.2)


@pytest.mark.parametrize("keyed", [False, True], ids=["default", "keys-on"])
def test_the_running_service_keeps_its_openapi_contract(tmp_path, keyed):
    """Every check, against the default configuration (no keys: the document declares none) and
    against one with keys on (the key is an operator's, which may also read /metrics)."""
    st = Path(sys.executable).parent / "schemathesis"
    # All of schemathesis' async jobs are one client's: the whole storage budget for it, so that
    # the stateful phase's jobs in flight (each reserves the largest result) do not reach a 503
    # storage_budget_exceeded, which its server-error check would count against the contract.
    env = {"PYSANDBOX_MAX_TIMEOUT_S": "2",
           "PYSANDBOX_STORAGE_BUDGET_PER_CLIENT_MB": str(DEFAULTS.storage_budget_mb)}
    headers: list[str] = []
    if keyed:
        env["PYSANDBOX_API_KEYS"] = f"schemathesis:{hashlib.sha256(KEY.encode()).hexdigest()}:operator"
        headers = ["-H", f"Authorization: Bearer {KEY}", "-H", f"X-API-Key: {KEY}"]
    with redis_server(tmp_path) as redis_url, workers(redis_url, 1), gunicorn(
            {"REDIS_URL": redis_url, **env}) as url:
        wait_started(url)
        run = subprocess.run(
            [str(st), "--config-file", str(REPO / "schemathesis.toml"), "--no-color", "run",
             f"{url}/openapi.json", *headers, "--checks", "all",
             "--phases", "examples,coverage,fuzzing,stateful",
             "--max-examples", str(MAX_EXAMPLES), "--workers", "1", "--seed", "9",
             "--request-timeout", "30", "--generation-database", "none"],
            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-8000:]
    generated = re.search(r"(\d+) generated", output)
    links = re.search(r"API Links:\s+(\d+) covered", output)
    assert generated and links, output[-3000:]
    assert int(generated.group(1)) >= 200 and int(links.group(1)) >= 2, output[-3000:]
    assert "Operations:       14 selected / 14 total" in output, output[:1500]  # sessions, probes
    print(f"schemathesis: {generated.group(1)} cases generated, {links.group(1)} API links covered")
