"""Parsing the harness's report defensively: the user's code could have written anything."""
import json
import math
from typing import Any

from jail.outcome import Outcome, Status

MAX_RESULT_DEPTH = 100
MAX_MESSAGE_CHARS = 2_000
MAX_TRACEBACK_CHARS = 64_000
OK_FRAME_BYTES = len('{"status": "ok", "result": }')
"""What the harness wraps around the result's JSON."""
CORRUPTED = "the result channel was corrupted (did the script write to file descriptors it does not own?)"


class ReportError(ValueError):
    """The report is not one the harness would have written."""


def _reject_constant(name: str) -> None:
    raise ReportError(f"non-JSON constant {name}")


def _depth(value: Any) -> int:
    """Nesting depth of a decoded JSON value, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return deepest


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ReportError(f"non-finite number {text}")
    return value


def _decode(data: bytes) -> dict[str, Any]:
    try:
        message = json.loads(data.decode("utf-8"), parse_constant=_reject_constant,
                             parse_float=_finite)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ReportError(str(exc)) from exc
    if not isinstance(message, dict) or not isinstance(message.get("status"), str) \
            or message["status"] not in Status._value2member_map_:
        raise ReportError("not a report")
    return message


def parse_report(data: bytes, max_result_bytes: int, common: dict[str, Any]) -> Outcome:
    """The Outcome a report describes, or invalid_result when it is not a well-formed report."""
    try:
        message = _decode(data)
    except ReportError:
        return Outcome(Status.INVALID_RESULT, message=CORRUPTED, **common)
    status = Status(message["status"])
    if status is Status.OK:
        if "result" not in message or set(message) != {"status", "result"}:
            return Outcome(Status.INVALID_RESULT, message=CORRUPTED, **common)
        if len(data) - OK_FRAME_BYTES > max_result_bytes:
            return Outcome(Status.RESULT_TOO_LARGE,
                           message=f"main() returned more than {max_result_bytes} bytes of JSON",
                           **common)
        if _depth(message["result"]) > MAX_RESULT_DEPTH:
            return Outcome(Status.INVALID_RESULT,
                           message=f"main() returned a value nested deeper than {MAX_RESULT_DEPTH} levels",
                           **common)
        return Outcome(Status.OK, result=message["result"], **common)
    text, trace = message.get("message"), message.get("traceback")
    if not isinstance(text, str) or not isinstance(trace, (str, type(None))):
        return Outcome(Status.INVALID_RESULT, message=CORRUPTED, **common)
    return Outcome(status, message=text[:MAX_MESSAGE_CHARS],
                   traceback=trace[:MAX_TRACEBACK_CHARS] if trace else None, **common)
