"""`python -m worker`: an RQ worker on $REDIS_URL that refuses to start if the jail is unsafe.

It runs one job at a time, in a warm jail of its own (PYSANDBOX_WARM_JAILS=0: one-off jails),
and holds the sessions it creates (worker/sessions.py: queue mode's sessions), all ended
(`shutdown`) when it stops gracefully.
When Redis goes away, RQ's worker quits its loop; this one waits for Redis to answer again and
works on with a new RQ worker, without a restart. With PYSANDBOX_WORKER_METRICS_PORT set it
serves its own /metrics on that port (compose: on the internal network only). With
PYSANDBOX_WORKER_ALIVE_FILE set it touches that file every ALIVE_EVERY_S once its jail passed
the self-test: Kubernetes' exec probes read its age (docs/operating.md, "Probes"). A thread
beats, not the RQ loop: the loop blocks in Redis (BLPOP, up to minutes) or in a job, whose own
timeout RQ enforces; and a Redis outage must not fail the probe.
"""
import logging
import sys
import threading
import time
from pathlib import Path

from prometheus_client import start_http_server
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, SimpleWorker
from rq.exceptions import StopRequested

from jail import Sandbox
from jail.selftest import self_test
from shared import callbacks, logs
from shared.metrics import observe_warm_jails
from shared.queue import QUEUE_NAME
from shared.settings import load, warn_unknown
from worker import jobs
from worker.sessions import SessionHost

RECONNECT_S = 1.0
ALIVE_EVERY_S = 5.0
LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"
"""A worker's Redis when REDIS_URL is unset (an API without it has no queue at all)."""
log = logging.getLogger("worker")


class StoppableWorker(SimpleWorker):
    """RQ's in-process worker, which remembers that it was told to stop (SIGTERM, SIGINT)."""

    stopping = False

    def request_stop(self, signum: int, frame: object) -> None:
        self.stopping = True
        super().request_stop(signum, frame)


def wait_for(redis: Redis) -> None:
    """Until Redis answers a PING (at least RECONNECT_S: never a busy loop)."""
    while True:
        time.sleep(RECONNECT_S)
        try:
            redis.ping()
            return
        except RedisError:
            pass


def beat_alive(path: Path) -> None:
    """Touch `path` now, then every ALIVE_EVERY_S from a daemon thread until the process exits."""
    def beat() -> None:
        while True:
            path.touch()
            time.sleep(ALIVE_EVERY_S)

    path.touch()
    threading.Thread(target=beat, name="alive-file", daemon=True).start()


def main() -> int:
    """Self-test the jail, then work the queue until told to stop."""
    settings = load()
    logs.setup(settings.log_format)
    warn_unknown()
    warm_jails = min(1, settings.warm_jails)
    sandbox = Sandbox(warm_jails, settings.tmp_mb, on_change=observe_warm_jails)
    verdict = self_test(sandbox)
    if not verdict.passed:
        log.error("worker: the jail failed its self-test (%s); not starting", verdict.failures)
        return 1
    memory = settings.memory_ledger_for(warm_jails)
    jobs.run_in(sandbox, memory)
    if settings.worker_alive_file:
        beat_alive(Path(settings.worker_alive_file))
    if settings.worker_metrics_port:
        start_http_server(settings.worker_metrics_port)
    redis = Redis.from_url(settings.redis_url or LOCAL_REDIS_URL)
    callbacks.start(redis, settings)  # the delivery loop, when callbacks are on
    sessions = SessionHost(redis, memory, settings.session_record_ttl_s, settings.result_ttl_s)
    sessions.start()
    try:
        return work(redis)
    finally:
        sessions.close("shutdown")


def work(redis: Redis) -> int:
    """Work the queue until told to stop (0), through Redis outages."""
    while True:
        # Jobs run in this process (not a forked work-horse), where the warm jail lives.
        worker = StoppableWorker([Queue(QUEUE_NAME, connection=redis)], connection=redis,
                        job_monitoring_interval=5, log_job_description=False)
        try:
            worker.work(with_scheduler=False)
        except RedisError as exc:  # raised by RQ's teardown once its loop quit for the same cause
            log.error("worker: lost Redis (%s)", type(exc).__name__)
        if worker.stopping:
            return 0
        log.warning("worker: the RQ loop ended without a stop request; waiting for Redis")
        try:
            wait_for(redis)
        except StopRequested:  # RQ's signal handlers stay installed: a stop while waiting
            return 0
        try:
            worker.register_death()  # the old registration, which Redis may still hold
        except RedisError:
            pass
        log.info("worker: Redis answers again; working on")


if __name__ == "__main__":
    sys.exit(main())
