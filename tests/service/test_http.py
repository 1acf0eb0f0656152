"""The service as clients meet it: real gunicorn over real HTTP, the real jail behind it."""
import concurrent.futures
import os
import tempfile
import time
from pathlib import Path

import requests

from jail.paths import paths
from tests.support.servers import gunicorn


def post(url: str, script: str, **options) -> requests.Response:
    return requests.post(f"{url}/execute", json={"script": script, **options}, timeout=30)


def test_health(service_url):
    response = requests.get(f"{service_url}/health", timeout=10)
    assert response.status_code == 200 and response.json()["status"] == "ok"


def test_execute_returns_result_and_stdout(service_url):
    response = post(service_url, "def main():\n    print('hello')\n    return [1, 'two']")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["result"] == [1, "two"] and response.json()["stdout"] == "hello\n"


def test_errors_are_json_over_http(service_url):
    assert post(service_url, "def main(): raise ValueError").json()["error"]["code"] == "main_error"
    response = requests.post(f"{service_url}/execute", data="nope",
                             headers={"Content-Type": "text/plain"}, timeout=10)
    assert response.status_code == 415 and response.json()["error"]["code"] == "unsupported_media_type"
    response = requests.delete(f"{service_url}/health", timeout=10)
    assert response.status_code == 405 and response.json()["error"]["code"] == "method_not_allowed"


def test_concurrent_requests_each_get_their_own_answer(service_url):
    script = "import time\ndef main():\n    time.sleep(0.2)\n    return {n}"
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda n: post(service_url, script.format(n=n)), range(4)))
    assert [r.json()["result"] for r in responses] == list(range(4))


def test_flood_past_capacity_gets_503_busy_not_a_queue():
    with gunicorn({"PYSANDBOX_MAX_CONCURRENT_RUNS": "2", "PYSANDBOX_QUEUE_WAIT_S": "0"}) as url:
        script = "import time\ndef main():\n    time.sleep(1.5)\n    return 1"
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda _: post(url, script, timeout=3), range(8)))
        codes = sorted(r.status_code for r in responses)
        assert codes.count(200) >= 2 and codes.count(503) >= 4, codes
        busy = next(r for r in responses if r.status_code == 503)
        assert busy.json()["error"]["code"] == "busy" and int(busy.headers["Retry-After"]) >= 1
        assert post(url, "def main(): return 'after'").json()["result"] == "after"


def test_a_jail_that_cannot_start_makes_the_service_refuse():
    with gunicorn({"PYSANDBOX_NSJAIL": "/bin/false"}, wait_healthy=False) as url:
        health = requests.get(f"{url}/health", timeout=10)
        assert health.status_code == 503 and health.json()["selftest"]["passed"] is False
        response = post(url, "def main(): return 1")
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "sandbox_unavailable"


def test_a_sandbox_failure_mid_service_is_a_generic_500():
    """The jail's site-packages vanishing after startup: nsjail cannot mount it."""
    parent = Path(tempfile.mkdtemp())
    parent.chmod(0o755)  # the jail's uid must be able to reach the mount source
    site = parent / "site"
    os.symlink(paths().site_dir, site)
    with gunicorn({"PYSANDBOX_JAIL_SITE": str(site), "PYSANDBOX_WARM_JAILS": "0"}) as url:
        assert post(url, "def main(): return 1").status_code == 200
        site.unlink()
        response = post(url, "def main(): return 1")
        assert response.status_code == 500
        assert response.json() == {"error": {"code": "internal_error",
                                             "message": "the sandbox failed; the error was logged"}}
    parent.rmdir()


def test_twenty_cpu_hogs_leave_a_benign_client_served():
    """20 scripts spinning at once: the excess is refused quickly (503 busy), nothing hangs,
    and a client that honours Retry-After gets its benign answer."""
    hog = "def main():\n    while True:\n        pass"
    with gunicorn({"PYSANDBOX_MAX_TIMEOUT_S": "2"}) as url:
        with concurrent.futures.ThreadPoolExecutor(21) as pool:
            hogs = [pool.submit(post, url, hog, timeout=2) for _ in range(20)]
            started = time.monotonic()
            while True:
                benign = post(url, "def main(): return 'served'")
                if benign.status_code != 503:
                    break
                assert time.monotonic() - started < 20, "the benign client was never served"
                time.sleep(float(benign.headers["Retry-After"]))
            waited = time.monotonic() - started
            codes = [(r.status_code, r.json()["error"]["code"]) for r in (h.result() for h in hogs)]
    assert benign.status_code == 200 and benign.json()["result"] == "served"
    assert set(codes) <= {(422, "timeout"), (503, "busy")} and (422, "timeout") in codes, codes
    print(f"benign request served after {waited:.2f} s among 20 CPU hogs")
