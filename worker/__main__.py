"""`python -m worker`: an RQ worker on $REDIS_URL that refuses to start if the jail is unsafe."""
import logging
import os
import sys

from redis import Redis
from rq import Queue, Worker

from jail.selftest import self_test
from worker.queue import QUEUE_NAME


def main() -> int:
    """Self-test the jail, then work the queue until told to stop."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    verdict = self_test()
    if not verdict.passed:
        logging.error("worker: the jail failed its self-test (%s); not starting", verdict.failures)
        return 1
    redis = Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    worker = Worker([Queue(QUEUE_NAME, connection=redis)], connection=redis,
                    job_monitoring_interval=5, log_job_description=False)
    worker.work(with_scheduler=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
