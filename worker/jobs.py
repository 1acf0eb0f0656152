"""The job functions the API enqueues by name: run one script in the jail.

run_stored (shared.queue.JOB_FUNCTION) reads the job's input from its own key and deletes it,
so that a taken job's input no longer fills Redis, and settles the job's storage budget
(shared/storage.py). execute takes the input as arguments: the form of jobs queued before
run_stored existed, which a persistent Redis may still hold.
"""
import logging
import pickle
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from rq import get_current_job
from rq.job import Job

from jail import Limits, Outcome, RunInput, Sandbox, SandboxError, Status
from jail.admission import ADMIT_WAIT_S, MemoryLedger
from jail.limits import MIB
from shared.answers import ended_job
from shared.logs import run_fields
from shared.metrics import QUEUE_WAIT_SECONDS, observe_run, observe_sandbox_error
from shared.queue import keep_alive
from shared.session_calls import call_back, settle
from shared.storage import JOB_OVERHEAD_BYTES, payload_key, stored_result_bytes, worst_result_bytes

log = logging.getLogger(__name__)
NOT_RUN = "the job was canceled before it ran"
_sandbox = Sandbox()
"""The worker's sandbox (run_in): RQ calls the job functions by name, with the job's arguments
only, so the process's sandbox is handed to this module once, at the worker's start."""
_memory: MemoryLedger | None = None
"""The ledger its runs are admitted against (jail/admission.py), likewise."""


def run_in(sandbox: Sandbox, memory: MemoryLedger | None = None) -> None:
    """Run this process's jobs in `sandbox` (the worker's, with its warm jail), admitted by
    memory against `memory` when given."""
    global _sandbox, _memory
    _sandbox, _memory = sandbox, memory


def execute(script: str, limits: dict[str, Any], inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the script with these limits and inputs (checked by the API); the Outcome as a dict
    (SandboxError fails the job).

    A job canceled before it starts never reaches a jail; one canceled while it runs has its
    jail killed. Both end as Status.CANCELED."""
    return _run(_current(), script, Limits(**limits), None if inputs is None else RunInput(**inputs))


def run_stored() -> dict[str, Any]:
    """Run the job whose input the API stored at payload_key(job id): read and delete it, then
    as execute(). Its storage is settled: the input's bytes released once read, the worst
    case replaced by what RQ will store once it ends (the overhead alone if the sandbox failed)."""
    job = _current()
    raw = job.connection.getdel(payload_key(job.id))
    if raw is None:  # only a cancel deletes it before a worker does: the cancel key is set
        outcome = Outcome(Status.CANCELED, message=NOT_RUN)
        settle(job, JOB_OVERHEAD_BYTES)
        _call_back(job, outcome)
        return outcome.to_dict()
    script, limits, inputs = pickle.loads(raw)  # type: ignore[arg-type]
    settle(job, worst_result_bytes(limits) + JOB_OVERHEAD_BYTES, done=False)
    try:
        value = _run(job, script, limits, inputs)
    except SandboxError:
        settle(job, JOB_OVERHEAD_BYTES)
        _call_back(job, None)
        raise
    settle(job, stored_result_bytes(value) + JOB_OVERHEAD_BYTES)
    _call_back(job, Outcome.from_dict(value))
    return value


def _call_back(job: Job, outcome: Outcome | None) -> None:
    """The job has ended (None: its sandbox failed): its callback, if any, is due
    (shared/callbacks.py; this process's delivery loop, or another worker's, sends it)."""
    call_back(job, ended_job(job.id, job.meta.get("request_id"), outcome, job.worker_name))


@contextmanager
def admitted(limits: Limits, canceled: threading.Event) -> Iterator[Outcome | None]:
    """Hold the run's memory while it runs: None once admitted (or without admission by
    memory), else the memory_unavailable outcome that ends the job unrun."""
    memory = _memory
    if memory is None:
        yield None
        return
    nbytes = memory.cost(limits.memory_mb)
    if memory.never_fits(nbytes):
        yield Outcome(Status.MEMORY_UNAVAILABLE, message=f"a run reserving {nbytes // MIB} MB cannot "
                      "fit in the memory this worker has for runs; ask for less memory")
        return
    token = memory.reserve(nbytes, ADMIT_WAIT_S, canceled)
    if token is None:
        yield Outcome(Status.MEMORY_UNAVAILABLE, message=f"no {nbytes // MIB} MB were free for the "
                      f"run within {ADMIT_WAIT_S} s; retry later")
        return
    try:
        yield None
    finally:
        memory.release(token)


def _current() -> Job:
    job = get_current_job()
    assert job is not None, "the job functions run inside an RQ job"
    return job


def _run(job: Job, script: str, limits: Limits, inputs: RunInput | None) -> dict[str, Any]:
    ids = {"job_id": job.id, "request_id": job.meta.get("request_id")}
    if job.enqueued_at is not None:
        enqueued = job.enqueued_at if job.enqueued_at.tzinfo else job.enqueued_at.replace(tzinfo=UTC)
        QUEUE_WAIT_SECONDS.observe(max(0.0, (datetime.now(UTC) - enqueued).total_seconds()))
    log.info("job started", extra=ids)
    with keep_alive(job.connection, job.id) as canceled, admitted(limits, canceled) as refusal:
        if canceled.is_set():
            outcome = Outcome(Status.CANCELED, message=NOT_RUN)
        elif refusal is not None:
            outcome = refusal
        else:
            try:
                outcome = _sandbox.run(script, limits, cancel=canceled, inputs=inputs)
            except SandboxError:
                observe_sandbox_error()
                log.exception("job failed: the sandbox failed", extra=ids)
                raise
            observe_run(outcome)
    log.info("job ended: %s", outcome.status.value, extra={**ids, **run_fields(outcome)})
    return outcome.to_dict()
