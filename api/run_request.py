"""A POST /execute request as a RunRequest: a script, its clamped limits and its inputs; the body
is validated by api/schemas.py, the inputs' caps and file names here."""
import binascii
import json
from dataclasses import dataclass

from flask import Request

from api.errors import CALLBACK_NOT_ALLOWED, INVALID_FILE, PAYLOAD_TOO_LARGE, UNSUPPORTED_MEDIA_TYPE, ApiError
from api.schemas import ExecuteQuery, ExecuteRequest, FileContent, TextFile, parse_json, parse_query
from jail import Limits, RunInput
from jail.runinput import in_name_problem
from shared.callbacks import CallbackRefused, Destinations
from shared.settings import Settings


def too_large(what: str) -> ApiError:
    """413 payload_too_large naming the cap."""
    return PAYLOAD_TOO_LARGE(what)


def invalid_file(name: str, why: str) -> ApiError:
    """400 invalid_file naming the file."""
    return INVALID_FILE(f"file {json.dumps(name)[:200]}: {why}")


@dataclass(frozen=True)
class RunRequest:
    """What POST /execute asks for."""

    script: str
    limits: Limits
    inputs: RunInput | None
    """None when the request has no input, stdin or files."""
    queued: bool
    """?async=1: enqueue it and answer 202."""
    callback_url: str | None = None
    """Where to POST the job's state when it ends (checked against PYSANDBOX_CALLBACK_HOSTS)."""


def parse_run_request(request: Request, settings: Settings) -> RunRequest:
    """The RunRequest, or an ApiError saying what is wrong.

    415 comes before the body is read, 413 before it is parsed (Flask's MAX_CONTENT_LENGTH)."""
    if not request.is_json:
        raise UNSUPPORTED_MEDIA_TYPE("send the body as Content-Type: application/json")
    body = parse_json(ExecuteRequest, request.get_data(cache=False))
    query = parse_query(ExecuteQuery, request.args.to_dict())
    return from_body(body, settings, query.is_async)


def from_body(body: ExecuteRequest, settings: Settings, queued: bool) -> RunRequest:
    """The RunRequest of a validated body (POST /execute's, or MCP's run_python arguments)."""
    if len(body.script.encode("utf-8", "surrogatepass")) > settings.max_script_bytes:
        raise too_large(f"the script is larger than {settings.max_script_bytes} bytes")
    if body.callback_url is not None:
        allowed_callback(body.callback_url, settings, queued)
    return RunRequest(body.script, settings.run_limits(body.timeout, body.memory_mb),
                      run_input(body, settings), queued, body.callback_url)


def allowed_callback(url: str, settings: Settings, queued: bool) -> None:
    """400 callback_not_allowed unless the run is queued and the operator allows the URL."""
    destinations = Destinations.of(settings)
    if destinations is None:
        raise CALLBACK_NOT_ALLOWED("callbacks are off on this service (PYSANDBOX_CALLBACK_HOSTS)")
    if not queued:
        raise CALLBACK_NOT_ALLOWED("callback_url is for queued runs: POST /execute?async=1")
    try:
        destinations.check(url)
    except CallbackRefused as exc:
        raise CALLBACK_NOT_ALLOWED(str(exc)) from None


def run_input(body: ExecuteRequest, settings: Settings) -> RunInput | None:
    """The request's input, stdin and files within their caps; None when it has none of them."""
    has_input = "input" in body.model_fields_set
    if not has_input and body.stdin is None and not body.files:
        return None
    input_json = None
    if has_input:
        input_json = json.dumps(body.input, ensure_ascii=False)
        if len(input_json.encode("utf-8", "surrogatepass")) > settings.max_input_bytes:
            raise too_large(f"the input is larger than {settings.max_input_bytes} bytes as JSON")
    stdin = (body.stdin or "").encode("utf-8", "surrogatepass")
    if len(stdin) > settings.max_stdin_bytes:
        raise too_large(f"stdin is larger than {settings.max_stdin_bytes} bytes")
    return RunInput(input_json=input_json, stdin=stdin, files=input_files(body.files or {}, settings))


def input_files(files: dict[str, str | FileContent], settings: Settings) -> tuple[tuple[str, bytes], ...]:
    """The files as (name, bytes), names checked, base64 decoded, within the count and size caps."""
    if len(files) > settings.max_files:
        raise too_large(f"more than {settings.max_files} files (PYSANDBOX_MAX_FILES)")
    cap, total, decoded = settings.files_in_cap(), 0, []
    for name, given in files.items():
        problem = in_name_problem(name)
        if problem is not None:
            raise invalid_file(name, problem)
        decoded.append((name, content_bytes(name, given)))
        total += len(decoded[-1][1])
        if total > cap:
            raise too_large(f"the files hold more than {cap} bytes in all (half the run's "
                            f"{settings.tmp_mb} MiB /tmp, PYSANDBOX_TMP_MB)")
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
