"""GET /openapi.json and GET /docs: the contract, and Swagger UI over it from files inside the image.

Swagger UI's files come from the flask-swagger-ui wheel (a pip dependency, so the image
build needs nothing new); the page loads nothing from outside the service.
"""
from importlib.resources import files
from pathlib import Path

from flask import Blueprint, Response, jsonify, send_from_directory

from api import ratelimits
from api.openapi import Access, document
from api.service import service

bp = Blueprint("docs", __name__)
ASSETS = Path(str(files("flask_swagger_ui") / "dist"))
PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>PySandbox API</title>
  <link rel="stylesheet" href="docs/swagger-ui.css">
  <link rel="icon" type="image/png" href="docs/favicon-32x32.png" sizes="32x32">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="docs/swagger-ui-bundle.js"></script>
  <script src="docs/docs-init.js"></script>
</body>
</html>
"""
CSP = "; ".join((
    "default-src 'self'",
    "img-src 'self' data:",  # Swagger UI's icons are data: URIs
    "style-src 'self' 'unsafe-inline'",  # its React components set style attributes
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
))
"""As strict as Swagger UI allows: its scripts only from the service (no inline script), its
requests only to the service ("Try it out" calls the API the page documents)."""
INIT = 'window.ui = SwaggerUIBundle({url: "openapi.json", dom_id: "#swagger-ui", deepLinking: true});\n'
"""Relative URLs throughout, so the page also works behind a proxy that adds a path prefix."""


@bp.after_request
def _harden(response: Response) -> Response:
    """The page, its assets and the document: the CSP, no sniffing, no referrer, no framing."""
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    return response


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3.1 document of the service as configured (keys, rate limits), built once per app."""
    state = service()
    if state.openapi is None:
        state.openapi = document(Access(keys=bool(state.keys), rate_limits=ratelimits.enabled(
            state.settings.rate_limit, state.keys)))
    return jsonify(state.openapi)


@bp.get("/docs")
def page() -> Response:
    """Swagger UI over /openapi.json."""
    return Response(PAGE, mimetype="text/html")


@bp.get("/docs/docs-init.js")
def init() -> Response:
    """The page's one script of its own (kept out of the HTML, so a strict CSP can allow it)."""
    return Response(INIT, mimetype="text/javascript")


@bp.get("/docs/<path:name>")
def asset(name: str) -> Response:
    """Swagger UI's own files."""
    return send_from_directory(ASSETS, name, max_age=86400)
