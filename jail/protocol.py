"""What a run produced, as an Outcome: the harness's report parsed defensively (the user's
code could have written anything there), or why the run ended without one."""
import binascii
import json
import math
import mimetypes
from typing import Any

from jail.limits import MIB, Limits
from jail.outcome import Outcome, OutFile, SandboxError, Status
from jail.pipes import RawRun
from jail.runinput import out_name_problem

MEMORY_NEAR_LIMIT = 0.9
"""Where the kernel does not say (cgroup v1, rlimits), a run killed with its memory peak this
close to its limit ran out of memory."""

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


def parse_files(data: bytes, limits: Limits) -> dict[str, Any]:
    """The report's second line (the files under out/) as Outcome fields; ReportError when it
    is not one the harness would have written within the caps."""
    try:
        message = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ReportError(str(exc)) from exc
    if not isinstance(message, dict) or set(message) != {"files", "truncated"} \
            or not isinstance(message["files"], list) or not isinstance(message["truncated"], bool) \
            or len(message["files"]) > limits.max_files_out:
        raise ReportError("not a files report")
    files, names, total = [], set(), 0
    for item in message["files"]:
        if not isinstance(item, dict) or set(item) != {"name", "content"} \
                or not isinstance(item["name"], str) or not isinstance(item["content"], str):
            raise ReportError("not a file")
        name = item["name"]
        if out_name_problem(name) is not None or name in names:
            raise ReportError("a file name the harness would not send")
        try:
            size = len(binascii.a2b_base64(item["content"].encode("ascii"), strict_mode=True))
        except (UnicodeEncodeError, binascii.Error) as exc:
            raise ReportError("a file's content is not base64") from exc
        total += size
        if total > limits.max_files_out_bytes:
            raise ReportError("files over the cap")
        names.add(name)
        media = mimetypes.guess_type(name, strict=False)[0] or "application/octet-stream"
        files.append(OutFile(name, size, media, item["content"]))
    return {"files": tuple(sorted(files, key=lambda f: f.name)), "files_truncated": message["truncated"]}


def parse_report(data: bytes, limits: Limits, common: dict[str, Any]) -> Outcome:
    """The Outcome a report describes, or invalid_result when it is not a well-formed report."""
    max_result_bytes = limits.max_result_bytes
    data, newline, files_line = data.partition(b"\n")
    try:
        message = _decode(data)
        if newline:
            common = {**common, **parse_files(files_line, limits)}
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


def interpret(raw: RawRun, limits: Limits) -> Outcome:
    """Turn what a jail produced into an Outcome; SandboxError when the jail itself failed."""
    peak, cpu_ns = raw.usage.peak_memory_bytes, raw.usage.cpu_ns
    common: dict[str, Any]
    common = {"stdout": raw.stdout.decode("utf-8", "replace"),
              "stderr": raw.stderr.decode("utf-8", "replace"),
              "output_truncated": raw.killed_for is Status.OUTPUT_LIMIT,
              "duration_ms": math.ceil(raw.elapsed_s * 1000),
              "cpu_ms": None if cpu_ns is None else math.ceil(cpu_ns / 1_000_000),
              "peak_memory_mb": None if peak is None else math.ceil(peak * 10 / MIB) / 10}
    if raw.killed_for is not None:
        return Outcome(raw.killed_for, message=_kill_message(raw.killed_for, limits), **common)
    if raw.report:
        return parse_report(bytes(raw.report), limits, common)
    return Outcome(**_without_report(raw, limits), **common)


def _kill_message(status: Status, limits: Limits) -> str:
    return {
        Status.TIMEOUT: f"the script ran longer than its {limits.timeout_s:g} s time limit",
        Status.MEMORY_LIMIT: _memory_message(limits),
        Status.OUTPUT_LIMIT: f"the script printed more than {limits.max_output_bytes} bytes",
        Status.RESULT_TOO_LARGE: f"main() returned more than {limits.max_result_bytes} bytes of JSON",
        Status.CANCELED: "the run was canceled; its jail was killed",
    }[status]


def _memory_message(limits: Limits) -> str:
    return f"the script used more than its {limits.memory_mb} MB memory limit"


def ran_out_of_memory(raw: RawRun, limits: Limits) -> bool:
    """The kernel's word where it gives one (cgroup v2: an OOM kill in the run's cgroup), else
    whether the run's memory peak came close enough to its limit to have been killed for it."""
    if raw.usage.oom_killed is not None:
        return raw.usage.oom_killed
    peak = raw.usage.peak_memory_bytes
    return peak is not None and peak >= MEMORY_NEAR_LIMIT * limits.memory_mb * MIB


def _without_report(raw: RawRun, limits: Limits) -> dict[str, Any]:
    """Why a run ended without a report: a limit, the script's own exit, or a broken jail."""
    if ran_out_of_memory(raw, limits):
        return {"status": Status.MEMORY_LIMIT, "message": _memory_message(limits)}
    if raw.exit is None:
        tail = raw.log[-2000:].decode("utf-8", "replace")
        raise SandboxError(f"the jail ended without saying how the script did: {tail}")
    if "exit" in raw.exit:
        return {"status": Status.NO_RESULT,
                "message": f"the script exited (status {raw.exit['exit']}) before main() returned"}
    if raw.exit["signal"] in ("SIGKILL", "SIGXCPU"):
        return {"status": Status.TIMEOUT,
                "message": "the script used more CPU time than its time limit allows"}
    return {"status": Status.NO_RESULT,
            "message": f"the script was killed by {raw.exit['signal']} before main() returned"}
