"""A POST /execute request as a script, its clamped limits and its inputs; the body is validated
by api/schemas.py, the inputs' caps and file names here."""
import binascii
import json
from typing import Any

from flask import Request

from api.errors import ApiError
from api.schemas import ExecuteQuery, ExecuteRequest, FileContent, TextFile, parse_json, parse_query
from jail import Limits, RunInput
from jail.limits import MIB
from jail.runinput import in_name_problem


def too_large(what: str) -> ApiError:
    """413 payload_too_large naming the cap."""
    return ApiError(413, "payload_too_large", what)


def invalid_file(name: str, why: str) -> ApiError:
    """400 invalid_file naming the file."""
    return ApiError(400, "invalid_file", f"file {json.dumps(name)[:200]}: {why}")


def files_in_cap(config: dict[str, Any]) -> int:
    """The input files' total size: half the run's /tmp, the other half the script's room."""
    return config["TMP_MB"] * MIB // 2


def parse_execute(request: Request, config: dict[str, Any]) -> tuple[str, Limits, RunInput | None, bool]:
    """The script, its limits, its inputs (None when the request has none) and whether to queue
    it; or an ApiError saying what is wrong.

    415 comes before the body is read, 413 before it is parsed (Flask's MAX_CONTENT_LENGTH)."""
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "send the body as Content-Type: application/json")
    body = parse_json(ExecuteRequest, request.get_data(cache=False))
    if len(body.script.encode("utf-8", "surrogatepass")) > config["MAX_SCRIPT_BYTES"]:
        raise too_large(f"the script is larger than {config['MAX_SCRIPT_BYTES']} bytes")
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
        max_files_out=config["MAX_FILES_OUT"],
        max_files_out_bytes=config["MAX_FILES_OUT_BYTES"],
    ), run_input(body, config), query.is_async


def run_input(body: ExecuteRequest, config: dict[str, Any]) -> RunInput | None:
    """The request's input, stdin and files within their caps; None when it has none of them."""
    has_input = "input" in body.model_fields_set
    if not has_input and body.stdin is None and not body.files:
        return None
    input_json = None
    if has_input:
        input_json = json.dumps(body.input, ensure_ascii=False)
        if len(input_json.encode("utf-8", "surrogatepass")) > config["MAX_INPUT_BYTES"]:
            raise too_large(f"the input is larger than {config['MAX_INPUT_BYTES']} bytes as JSON")
    stdin = (body.stdin or "").encode("utf-8", "surrogatepass")
    if len(stdin) > config["MAX_STDIN_BYTES"]:
        raise too_large(f"stdin is larger than {config['MAX_STDIN_BYTES']} bytes")
    return RunInput(input_json=input_json, stdin=stdin, files=input_files(body.files or {}, config))


def input_files(files: dict[str, str | FileContent], config: dict[str, Any]) -> tuple[tuple[str, bytes], ...]:
    """The files as (name, bytes), names checked, base64 decoded, within the count and size caps."""
    if len(files) > config["MAX_FILES"]:
        raise too_large(f"more than {config['MAX_FILES']} files (PYSANDBOX_MAX_FILES)")
    cap, total, decoded = files_in_cap(config), 0, []
    for name, given in files.items():
        problem = in_name_problem(name)
        if problem is not None:
            raise invalid_file(name, problem)
        decoded.append((name, content_bytes(name, given)))
        total += len(decoded[-1][1])
        if total > cap:
            raise too_large(f"the files hold more than {cap} bytes in all (half the run's "
                            f"{config['TMP_MB']} MiB /tmp, PYSANDBOX_TMP_MB)")
    names = {name for name, _ in decoded}
    for name, _ in decoded:
        parts = name.split("/")
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in names:
                raise invalid_file(name, f"{'/'.join(parts[:depth])!r} is a file, not a directory")
    return tuple(decoded)


def content_bytes(name: str, given: str | FileContent) -> bytes:
    """A file's bytes: its text as UTF-8, or its base64 decoded (strictly)."""
    if isinstance(given, str):
        return given.encode("utf-8", "surrogatepass")
    if isinstance(given, TextFile):
        return given.content.encode("utf-8", "surrogatepass")
    try:
        return binascii.a2b_base64(given.content.encode("ascii"), strict_mode=True)
    except (UnicodeEncodeError, binascii.Error):
        raise invalid_file(name, "the content is not valid base64") from None
