"""Turning an Outcome into the API's JSON: 200 with the result, or 422 with the script's error."""
from typing import Any

from api.errors import ApiError
from dataclasses import asdict

from jail import Outcome


def output_fields(outcome: Outcome) -> dict[str, Any]:
    """What the script printed, how long it ran and what it used: part of every answer about a run."""
    return {"stdout": outcome.stdout, "stderr": outcome.stderr,
            "output_truncated": outcome.output_truncated, "duration_ms": outcome.duration_ms,
            "cpu_ms": outcome.cpu_ms, "peak_memory_mb": outcome.peak_memory_mb,
            "files": [asdict(f) for f in outcome.files], "files_truncated": outcome.files_truncated}


def outcome_error(outcome: Outcome) -> ApiError:
    """The 422 error of a run whose main() did not return a JSON value."""
    detail = {"traceback": outcome.traceback} if outcome.traceback else {}
    return ApiError(422, outcome.status.value, outcome.message, detail=detail,
                    extra=output_fields(outcome))


def outcome_body(outcome: Outcome) -> dict[str, Any]:
    """The 200 body of a run whose main() returned; raises the 422 ApiError otherwise."""
    if not outcome.ok:
        raise outcome_error(outcome)
    return {"result": outcome.result, **output_fields(outcome)}
