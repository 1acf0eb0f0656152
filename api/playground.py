"""GET / and /playground/*: a page to try the API in a browser, from files inside the image.

Plain HTML, CSS and JavaScript modules in api/playground_static/ (no framework, no build
step, nothing fetched from elsewhere); the page only calls the public API (/execute,
/jobs/<id>), as any client would.
"""
from pathlib import Path

from flask import Blueprint, Response

STATIC = Path(__file__).with_name("playground_static")
bp = Blueprint("playground", __name__, static_folder=STATIC, static_url_path="/playground")

CSP = "; ".join((
    "default-src 'self'",
    "img-src 'self' data: blob:",  # returned images are shown from blob: URLs
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
))
"""No inline script or style, nothing from another origin: what the API returns can never run."""


@bp.after_request
def _harden(response: Response) -> Response:
    """The page and its assets: a strict CSP, no sniffing, no referrer.

    Caching is Flask's default for static files, which suits them: `Cache-Control: no-cache`
    with an ETag and Last-Modified, so browsers keep the files but revalidate them (304).
    Their names carry no content hash (there is no build step), so a longer max-age would
    serve an old page's modules after an upgrade.
    """
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@bp.get("/")
def page() -> Response:
    """The playground."""
    return bp.send_static_file("index.html")
