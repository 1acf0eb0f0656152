"""A POST /execute request as a script and its clamped limits; the body is validated by api/schemas.py."""
from typing import Any

from flask import Request

from api.errors import ApiError
from api.schemas import ExecuteQuery, ExecuteRequest, parse_json, parse_query
from jail import Limits


def parse_execute(request: Request, config: dict[str, Any]) -> tuple[str, Limits, bool]:
    """The script, its limits and whether to queue it; or an ApiError saying what is wrong.

    415 comes before the body is read, 413 before it is parsed (Flask's MAX_CONTENT_LENGTH)."""
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "send the body as Content-Type: application/json")
    body = parse_json(ExecuteRequest, request.get_data(cache=False))
    if len(body.script.encode("utf-8", "surrogatepass")) > config["MAX_SCRIPT_BYTES"]:
        raise ApiError(413, "payload_too_large",
                       f"the script is larger than {config['MAX_SCRIPT_BYTES']} bytes")
    query = parse_query(ExecuteQuery, request.args.to_dict())
    timeout = body.timeout or config["DEFAULT_TIMEOUT_S"]
    memory = body.memory_mb or config["DEFAULT_MEMORY_MB"]
    return body.script, Limits(
        timeout_s=float(min(timeout, config["MAX_TIMEOUT_S"])),
        memory_mb=int(min(max(memory, config["MIN_MEMORY_MB"]), config["MAX_MEMORY_MB"])),
        max_pids=config["MAX_PIDS"],
        max_output_bytes=config["MAX_OUTPUT_BYTES"],
        max_result_bytes=config["MAX_RESULT_BYTES"],
        tmp_mb=config["TMP_MB"],
    ), query.is_async
