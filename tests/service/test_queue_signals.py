"""What an autoscaler scales on (docs/operating.md, "Scaling on the queue"), scraped from /metrics
with real redis-server, gunicorn and workers: the queue's depth, its oldest job's age, running jobs."""
import tempfile
import time
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support.servers import gunicorn, redis_server, workers

SLOW = "import time\ndef main():\n    time.sleep(3)\n    return 1\n"


def scrape(base: str) -> dict[tuple[str, str], float]:
    """{(sample name, its state label or ""): value} of one scrape."""
    text = requests.get(f"{base}/metrics", timeout=30).text
    return {(sample.name, sample.labels.get("state", "")): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_depth_oldest_age_and_running_jobs_follow_the_queue() -> None:
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as url, \
            gunicorn({"REDIS_URL": url, "PYSANDBOX_EXECUTE_VIA_QUEUE": "true"}, wait_healthy=False) as base, \
            workers(url, 1, {"PYSANDBOX_WARM_JAILS": "0"}):
        idle = scrape(base)
        assert idle[("pysandbox_queue_oldest_job_age_seconds", "")] == 0
        assert idle[("pysandbox_queue_jobs", "queued")] == 0
        ids = [requests.post(f"{base}/execute?async=1", json={"script": SLOW}, timeout=30).json()["id"]
               for _ in range(3)]
        time.sleep(1.5)  # the worker has taken the first; the other two have waited this long
        busy = scrape(base)
        assert busy[("pysandbox_queue_jobs", "started")] == 1, busy
        assert busy[("pysandbox_queue_jobs", "queued")] == 2, busy
        age = busy[("pysandbox_queue_oldest_job_age_seconds", "")]
        assert 1.0 <= age < 4.0, age
        time.sleep(1)
        assert scrape(base)[("pysandbox_queue_oldest_job_age_seconds", "")] > age  # it grows
        deadline = time.monotonic() + 60
        while any(requests.get(f"{base}/jobs/{job_id}", timeout=30).json()["status"] != "finished"
                  for job_id in ids):
            assert time.monotonic() < deadline, "the jobs did not finish"
            time.sleep(0.5)
        done = scrape(base)
        assert done[("pysandbox_queue_jobs", "queued")] == 0
        assert done[("pysandbox_queue_jobs", "started")] == 0
        assert done[("pysandbox_queue_oldest_job_age_seconds", "")] == 0
