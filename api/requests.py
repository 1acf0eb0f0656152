"""Validating a POST /execute body into a script and its clamped limits."""
import json
import math
from typing import Any

from flask import Request

from api.errors import ApiError, invalid
from jail import Limits

FIELDS = {"script", "timeout", "memory_mb"}


def _body(request: Request) -> dict[str, Any]:
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "send the body as Content-Type: application/json")
    try:
        body = json.loads(request.get_data(cache=False))
    except (ValueError, RecursionError):
        raise invalid("the body is not valid JSON (or not UTF-8)") from None
    if not isinstance(body, dict):
        raise invalid("the body must be a JSON object")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise invalid(f"unknown field(s) {unknown}; allowed: {sorted(FIELDS)}")
    return body


def _number(body: dict[str, Any], name: str, kind: type) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) \
            or not math.isfinite(value) or value <= 0:
        raise invalid(f"'{name}' must be a positive {'number' if kind is float else 'integer'}")
    return value


def parse_execute(request: Request, config: dict[str, Any]) -> tuple[str, Limits]:
    """The script and its limits, or an ApiError saying what is wrong with the request."""
    body = _body(request)
    script = body.get("script")
    if not isinstance(script, str) or not script.strip():
        raise invalid("'script' must be a non-empty string of Python source")
    if len(script.encode("utf-8", "surrogatepass")) > config["MAX_SCRIPT_BYTES"]:
        raise ApiError(413, "payload_too_large",
                       f"the script is larger than {config['MAX_SCRIPT_BYTES']} bytes")
    timeout = _number(body, "timeout", float) or config["DEFAULT_TIMEOUT_S"]
    memory = _number(body, "memory_mb", int) or config["DEFAULT_MEMORY_MB"]
    return script, Limits(
        timeout_s=float(min(timeout, config["MAX_TIMEOUT_S"])),
        memory_mb=int(min(max(memory, config["MIN_MEMORY_MB"]), config["MAX_MEMORY_MB"])),
        max_pids=config["MAX_PIDS"],
        max_output_bytes=config["MAX_OUTPUT_BYTES"],
        max_result_bytes=config["MAX_RESULT_BYTES"],
        tmp_mb=config["TMP_MB"],
    )
