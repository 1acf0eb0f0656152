"""The API's logs (shared/logs.py's format): lines written while a request is served add
`request_id` and, when the request carries X-Cloud-Trace-Context, `logging.googleapis.com/trace`
(and `spanId`). gunicorn's access log (GunicornLogger) writes the one line per request, with
`httpRequest` and what the app noted about the request in its WSGI environ (annotate()): the
job id, the error or outcome code, the run's usage, the client.
"""
import logging
from typing import Any

from flask import Flask, Response, g, has_request_context, request
from gunicorn.glogging import Logger as BaseGunicornLogger

from api.request_ids import request_id
from shared import logs, settings
from shared.logs import LogFormat, formatter, trace_fields

ENVIRON_KEY = "pysandbox.log"
"""The WSGI environ entry where a request's log fields gather until gunicorn logs it."""
TRACE_HEADER = "X-Cloud-Trace-Context"


class RequestContext(logging.Filter):
    """Adds the request id and trace to every line logged while a request is served."""

    def filter(self, record: logging.LogRecord) -> bool:
        if has_request_context():
            record.request_id = request_id()
            record.__dict__.update(trace_fields(request.headers.get(TRACE_HEADER)))
        return True


def setup(log_format: LogFormat) -> None:
    """The shared log format, with each request's fields."""
    logs.setup(log_format, RequestContext())


def annotate(**fields: Any) -> None:
    """Note fields for this request's access-log line (None values are left out)."""
    if has_request_context():
        noted = request.environ.setdefault(ENVIRON_KEY, {})
        noted.update({name: value for name, value in fields.items() if value is not None})


def _note_request(response: Response) -> Response:
    annotate(request_id=request_id(), client=g.get("client"))
    return response


def register(app: Flask) -> None:
    """Put the request id and the client's name (flask.g.client, when set) in the request's line."""
    app.after_request(_note_request)


class GunicornLogger(BaseGunicornLogger):
    """gunicorn's logs in our format; the access line in JSON carries httpRequest and our fields.

    With PYSANDBOX_LOG_FORMAT=text it is gunicorn's own logger, unchanged."""

    json_lines = True

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        log_format = settings.load().log_format
        self.json_lines = log_format == "json"
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(formatter(log_format))

    def access(self, resp: Any, req: Any, environ: dict, request_time: Any) -> None:
        if not self.json_lines:
            super().access(resp, req, environ, request_time)
            return
        if not self.access_log_enabled:
            return
        status = int(str(resp.status).split(None, 1)[0])
        path = environ.get("PATH_INFO", "")
        query = environ.get("QUERY_STRING", "")
        method = environ.get("REQUEST_METHOD", "")
        http = {"requestMethod": method, "requestUrl": f"{path}?{query}" if query else path,
                "status": status, "responseSize": str(getattr(resp, "sent", 0) or 0),
                "userAgent": environ.get("HTTP_USER_AGENT", ""),
                "remoteIp": environ.get("REMOTE_ADDR", ""),
                "protocol": environ.get("SERVER_PROTOCOL", ""),
                "latency": f"{request_time.total_seconds():.6f}s"}
        fields = {"httpRequest": http, **trace_fields(environ.get("HTTP_X_CLOUD_TRACE_CONTEXT")),
                  **environ.get(ENVIRON_KEY, {})}
        try:
            self.access_log.info("%s %s %d", method, path, status, extra=fields)
        except Exception:
            self.error("access log failed", exc_info=True)
