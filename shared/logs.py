"""Log lines of every process (API and workers): one JSON object per line with the fields Cloud
Logging reads, or readable text lines.

PYSANDBOX_LOG_FORMAT=json (the default) or text (shared/settings.py). In JSON every line has
`severity`, `message`, `time` and `logger`. The API adds a request's fields (api/logs.py). A
script's source, output and result are never passed to a log: only ids, codes, durations and sizes.
"""
import logging
import os
import re
from typing import Any, Literal

from pythonjsonlogger.json import JsonFormatter

from jail import Outcome

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TRACE = re.compile(r"([0-9a-fA-F]{32})(?:/(\d{1,20}))?")
TRACE_KEY, SPAN_KEY = "logging.googleapis.com/trace", "logging.googleapis.com/spanId"


LogFormat = Literal["json", "text"]


def formatter(log_format: LogFormat) -> logging.Formatter:
    """The formatter every handler of ours uses: JSON, or the readable text line."""
    if log_format == "text":
        return logging.Formatter(TEXT_FORMAT)
    return JsonFormatter("{levelname}{name}{message}", style="{", timestamp="time",
                         rename_fields={"levelname": "severity", "name": "logger"})


def trace_fields(header: str | None) -> dict[str, str]:
    """Cloud Logging's trace fields from an X-Cloud-Trace-Context value ("TRACE/SPAN;o=1")."""
    found = TRACE.match(header or "")
    if found is None:
        return {}
    project = os.environ.get("GOOGLE_CLOUD_PROJECT", "")
    trace = found[1].lower()
    fields = {TRACE_KEY: f"projects/{project}/traces/{trace}" if project else trace}
    if found[2]:
        fields[SPAN_KEY] = found[2]
    return fields


def setup(log_format: LogFormat, *filters: logging.Filter) -> None:
    """Route the root logger (the app's, the jail's, rq's lines) through our formatter, with
    these filters (the API's adds a request's fields)."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(log_format))
    for line_filter in filters:
        handler.addFilter(line_filter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    # A line that cannot be written (a daemon thread logging while the interpreter shuts down, its
    # stream already closed) is dropped, not reported by logging in its own plain-text block: every
    # line on the image's output is one JSON object (tests/image/test_docker.py reads them all).
    logging.raiseExceptions = False


def run_fields(outcome: Outcome) -> dict[str, Any]:
    """What a log line says about a run: how it ended, in which jail, what it used."""
    return {"outcome": outcome.status.value, "jail": outcome.jail, "duration_ms": outcome.duration_ms,
            "cpu_ms": outcome.cpu_ms, "peak_memory_mb": outcome.peak_memory_mb}
