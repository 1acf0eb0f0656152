"""`python -m worker`: an RQ worker on $REDIS_URL that refuses to start if the jail is unsafe.

It runs one job at a time, in a warm jail of its own (PYSANDBOX_WARM_JAILS=0: one-off jails).
"""
import logging
import os
import sys

from redis import Redis
from rq import Queue, SimpleWorker

from api.config import load_config
from jail import start_warm_pool
from jail.selftest import self_test
from worker.queue import QUEUE_NAME


def main() -> int:
    """Self-test the jail, then work the queue until told to stop."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config(None)
    start_warm_pool(min(1, config["WARM_JAILS"]), config["TMP_MB"])
    verdict = self_test()
    if not verdict.passed:
        logging.error("worker: the jail failed its self-test (%s); not starting", verdict.failures)
        return 1
    redis = Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    # Jobs run in this process (not a forked work-horse), where the warm jail lives.
    worker = SimpleWorker([Queue(QUEUE_NAME, connection=redis)], connection=redis,
                    job_monitoring_interval=5, log_job_description=False)
    worker.work(with_scheduler=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
