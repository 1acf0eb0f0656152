"""Turning an Outcome into the API's JSON: 200 with the result, or 422 with the script's error."""
from dataclasses import asdict
from typing import Any

from api.errors import ApiError
from jail import Outcome, Status


def output_fields(outcome: Outcome) -> dict[str, Any]:
    """What the script printed, how long it ran and what it used: part of every answer about a run."""
    return {"stdout": outcome.stdout, "stderr": outcome.stderr,
            "output_truncated": outcome.output_truncated, "duration_ms": outcome.duration_ms,
            "cpu_ms": outcome.cpu_ms, "peak_memory_mb": outcome.peak_memory_mb,
            "files": [asdict(f) for f in outcome.files], "files_truncated": outcome.files_truncated,
            "enforcement": outcome.enforcement or None}


def outcome_error(outcome: Outcome) -> ApiError:
    """The error of a run whose main() did not return a JSON value: 422, the script's fault;
    503 for a job its worker had no memory for (the service's)."""
    detail = {"traceback": outcome.traceback} if outcome.traceback else {}
    status = 503 if outcome.status is Status.MEMORY_UNAVAILABLE else 422
    return ApiError(status, outcome.status.value, outcome.message, detail=detail,
                    extra=output_fields(outcome))


def outcome_body(outcome: Outcome) -> dict[str, Any]:
    """The 200 body of a run whose main() returned; raises the 422 ApiError otherwise."""
    if not outcome.ok:
        raise outcome_error(outcome)
    return {"result": outcome.result, **output_fields(outcome)}
