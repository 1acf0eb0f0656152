"""`python -m worker`: an RQ worker on $REDIS_URL that refuses to start if the jail is unsafe.

It runs one job at a time, in a warm jail of its own (PYSANDBOX_WARM_JAILS=0: one-off jails),
and holds the sessions it creates (worker/sessions.py: queue mode's sessions), all ended
(`shutdown`) when it stops gracefully.
When Redis goes away, RQ's worker quits its loop; this one waits for Redis to answer again and
works on with a new RQ worker, without a restart; a run that ended meanwhile has its outcome stored
once Redis answers. Its RQ name starts with the host's name (a job's `worker` in GET /jobs/<id>).
With PYSANDBOX_WORKER_METRICS_PORT set it serves its own /metrics on that port (compose: on the
internal network only). With PYSANDBOX_WORKER_ALIVE_FILE set it touches that file every
ALIVE_EVERY_S once its jail passed the self-test: Kubernetes' exec probes read its age
(docs/operating.md, "Probes"). A thread
beats, not the RQ loop: the loop blocks in Redis (BLPOP, up to minutes) or in a job, whose own
timeout RQ enforces; and a Redis outage must not fail the probe.
"""
import logging
import os
import secrets
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import start_http_server
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, SimpleWorker
from rq.exceptions import StopRequested
from rq.executions import Execution
from rq.job import Job

from jail import Sandbox
from jail.selftest import self_test
from shared import callbacks, logs
from shared.metrics import observe_warm_jails
from shared.queue import QUEUE_NAME, wait_for
from shared.settings import load, warn_unknown
from worker import jobs
from worker.sessions import SessionHost

ALIVE_EVERY_S = 5.0
LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"
DEAD_PEER_OPTIONS = {socket.TCP_KEEPIDLE: 5, socket.TCP_KEEPINTVL: 2, socket.TCP_KEEPCNT: 3,
                     socket.TCP_USER_TIMEOUT: 15_000}
"""A Redis on another host that is lost (a power cut: no reset ever comes back) ends the
worker's connections within ~15 s: keepalive probes on an idle one (blocked in BLPOP) and a
user timeout on one with data unacknowledged, where RQ's read timeout is ~415 s."""
"""A worker's Redis when REDIS_URL is unset (an API without it has no queue at all)."""
log = logging.getLogger("worker")


class StoppableWorker(SimpleWorker):
    """RQ's in-process worker, which remembers that it was told to stop (SIGTERM, SIGINT)."""

    stopping = False

    def request_stop(self, signum: int, frame: object) -> None:
        self.stopping = True
        super().request_stop(signum, frame)

    def _finalize_success(self, job: Job, queue: Queue, execution: Execution, return_value: Any) -> None:
        """RQ's storing of a run's outcome (a private method of RQ's, pinned in pyproject.toml),
        through a Redis outage: it waits for Redis and stores it then, so that a run that ended
        while Redis was away (a restart, a failover, the host of Redis lost) is answered, not
        dropped as `worker_lost`."""
        while True:
            try:
                super()._finalize_success(job, queue, execution, return_value)
                return
            except RedisError as exc:
                log.warning("worker: Redis went away before a job's outcome was stored (%s); "
                            "storing it once Redis answers", type(exc).__name__, extra={"job_id": job.id})
                wait_for(self.connection)


def worker_name() -> str:
    """This worker's name in RQ, which each job it takes keeps (GET /jobs/<id>'s `worker`): the
    host's name and the pid, for an operator to find it, and a token, so that the registration made
    after a Redis outage never meets the old one."""
    return f"{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(3)}"


def connect(url: str) -> Redis:
    """The worker's Redis; over TCP, with DEAD_PEER_OPTIONS (a unix socket has no peer host)."""
    if urlsplit(url).scheme in ("redis", "rediss"):
        return Redis.from_url(url, socket_keepalive=True, socket_keepalive_options=DEAD_PEER_OPTIONS)
    return Redis.from_url(url)


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
    redis = connect(settings.redis_url or LOCAL_REDIS_URL)
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
        worker = StoppableWorker([Queue(QUEUE_NAME, connection=redis)], connection=redis, name=worker_name(),
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
