"""X-Request-ID: a well-formed id from the client is kept, otherwise one is made; every response says it.

Well-formed: 1 to 128 characters of A-Z, a-z, 0-9, '.', '_' and '-' (what log systems and
tracing headers carry safely). Anything else is replaced, not refused: an id is a courtesy.
"""
import re
import uuid

from flask import Flask, Response, g, request

HEADER = "X-Request-ID"
WELL_FORMED = re.compile(r"[A-Za-z0-9._-]{1,128}")


def request_id() -> str:
    """This request's id: the client's when well-formed, else a new uuid4 (hex)."""
    if "request_id" not in g:
        given = request.headers.get(HEADER, "")
        g.request_id = given if WELL_FORMED.fullmatch(given) else uuid.uuid4().hex
    return str(g.request_id)


def _answer(response: Response) -> Response:
    response.headers[HEADER] = request_id()
    return response


def register(app: Flask) -> None:
    """Answer X-Request-ID on every response, errors included."""
    app.after_request(_answer)
