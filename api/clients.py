"""Who is asking: optional API keys, and the client each request is counted against.

Keys are off unless configured (PYSANDBOX_API_KEYS and/or PYSANDBOX_API_KEYS_FILE). The
service stores only each key's SHA-256: keys are long random strings (`secrets.token_urlsafe(32)`,
256 bits), for which a fast hash is as safe as a slow one and costs microseconds per request.
A presented key is hashed, then compared with every stored hash by hmac.compare_digest, all of
them every time, so neither the bytes of a key nor which key matched shows in the timing.
A key is never logged nor echoed: errors say only that it is missing, malformed or unknown.

A key may carry the `operator` role: only such keys read the operator's paths (OPERATOR_PATHS:
/metrics, which names every client and counts their requests); a tenant's key gets 403 there.

A client is the key's name when keys are on, else the request's address (after
PYSANDBOX_TRUSTED_PROXIES proxies, through werkzeug's ProxyFix). `g.client` holds the key's
name or None: names are few and chosen by the operator, so logs and metrics may label by them;
addresses are unbounded and never become a metric label.
"""
import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path

from flask import Flask, g, request
from limits import parse_many
from werkzeug.middleware.proxy_fix import ProxyFix

from api.errors import FORBIDDEN, UNAUTHORIZED, ApiError
from api.service import service
from shared.settings import Settings

PUBLIC_PATHS = frozenset({"/health", "/livez", "/readyz", "/startupz", "/", "/openapi.json", "/docs"})
"""Answered without a key: health checks and probes (api/probes.py), the playground page (it asks
its user for a key), and the API's documentation, which holds no user data and says nothing docs/ does not.
/metrics is not here: with keys on it needs an operator's key (OPERATOR_PATHS)."""
OPERATOR_PATHS = frozenset({"/metrics"})
"""Answered only to keys with the `operator` role when keys are on: what they show is every
tenant's activity (names, request and error counts, storage held)."""
OPERATOR = "operator"
PUBLIC_PREFIXES = ("/docs/", "/playground/")
"""The assets of /docs and of the playground page."""
NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
BEARER = re.compile(r"Bearer +([^\s,]+) *", re.IGNORECASE)
CHALLENGE = 'Bearer realm="pysandbox"'


@dataclass(frozen=True)
class Key:
    """One configured key: its name, its SHA-256, its own rate limits ("" = the default), and
    whether it may read the operator's paths."""

    name: str
    digest: bytes
    rate_limit: str = ""
    operator: bool = False


def parse_keys(text: str, origin: str) -> list[Key]:
    """Keys from lines (or comma-separated entries) of `name:sha256-hex[:rate limits][:operator]`;
    blank lines and `#` comments are skipped. Errors name the entry, never its hash."""
    keys = []
    for number, entry in enumerate(re.split(r"[\n,]", text), 1):
        entry = entry.strip()
        if not entry or entry.startswith("#"):
            continue
        name, _, rest = entry.partition(":")
        digest, *options = rest.split(":")
        where = f"{origin}, entry {number}"
        if not NAME.fullmatch(name):
            raise ValueError(f"{where}: a key's name is 1-64 characters of A-Z a-z 0-9 . _ -")
        if not SHA256_HEX.fullmatch(digest):
            raise ValueError(f"{where} ({name}): expected name:sha256-hex[:limits][:operator], "
                             "the hash as 64 hex digits")
        operator = OPERATOR in options
        limits = [option for option in options if option and option != OPERATOR]
        if len(limits) > 1:
            raise ValueError(f"{where} ({name}): expected name:sha256-hex[:limits][:operator]")
        if limits:
            try:
                parse_many(limits[0])
            except ValueError:
                raise ValueError(f"{where} ({name}): bad rate limit {limits[0]!r}") from None
        keys.append(Key(name, bytes.fromhex(digest), limits[0] if limits else "", operator))
    return keys


def load_keys(settings: Settings) -> list[Key]:
    """The keys of PYSANDBOX_API_KEYS and of the file PYSANDBOX_API_KEYS_FILE names; [] = keys off."""
    keys = parse_keys(settings.api_keys, "PYSANDBOX_API_KEYS")
    if settings.api_keys_file:
        path = Path(settings.api_keys_file)
        keys += parse_keys(path.read_text(), str(path))
    names = [key.name for key in keys]
    if len(set(names)) != len(names):
        raise ValueError("API keys: two keys have the same name")
    return keys


def identify(presented: str, keys: list[Key]) -> Key | None:
    """The key whose hash matches, comparing with every key in constant time."""
    digest = hashlib.sha256(presented.encode()).digest()
    found = None
    for key in keys:
        if hmac.compare_digest(digest, key.digest):
            found = key
    return found


def forbidden(path: str) -> ApiError:
    """403 forbidden: a tenant's key on an operator's path."""
    return FORBIDDEN(f"{path} is for the operator: it needs a key with the "
                     f"`{OPERATOR}` role (name:sha256-hex[:limits]:{OPERATOR})")


def unauthorized(message: str, invalid: bool = False) -> ApiError:
    """401 unauthorized, with the challenge RFC 6750 describes."""
    challenge = CHALLENGE + (', error="invalid_token"' if invalid else "")
    return UNAUTHORIZED(message, headers={"WWW-Authenticate": challenge})


def presented_key() -> str:
    """The key this request carries (Authorization: Bearer, or X-API-Key); 401 if none or two."""
    authorization = request.headers.get("Authorization")
    header_key = request.headers.get("X-API-Key", "").strip()  # empty counts as absent
    bearer = ""
    if authorization is not None:
        found = BEARER.fullmatch(authorization)
        if not found:
            raise unauthorized("malformed Authorization header: send `Authorization: Bearer <key>`")
        bearer = found.group(1)
    if bearer and header_key and bearer != header_key:
        raise unauthorized("two different keys: send one, as Authorization: Bearer or as X-API-Key")
    key = bearer or header_key
    if not key:
        raise unauthorized("an API key is required: send `Authorization: Bearer <key>` or `X-API-Key: <key>`")
    return key


def is_public(path: str) -> bool:
    """Whether path is answered without a key (PUBLIC_PATHS and PUBLIC_PREFIXES)."""
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def client_id() -> str:
    """Whom this request counts against for rate limits and fair sharing: "key:<name>" when keys
    are on, else "addr:<address>" (after the trusted proxies)."""
    name = g.get("client")
    return f"key:{name}" if name else f"addr:{request.remote_addr or '-'}"


def client_key() -> Key | None:
    """The key this request authenticated with (None when keys are off or the path is public)."""
    return g.get("client_key")


def _authenticate() -> None:
    keys: list[Key] = _keys()
    g.client = None
    if not keys or is_public(request.path):
        return
    key = identify(presented_key(), keys)
    if key is None:
        raise unauthorized("unknown API key", invalid=True)
    g.client, g.client_key = key.name, key
    if request.path in OPERATOR_PATHS and not key.operator:
        raise forbidden(request.path)


def _keys() -> list[Key]:
    return service().keys


def register(app: Flask, proxies: int) -> None:
    """Trust `proxies` proxies' X-Forwarded-For (PYSANDBOX_TRUSTED_PROXIES), and ask for a key when
    keys are on. Registered before the rate limiter, which counts by the client this decides."""
    if proxies < 0:
        raise ValueError("PYSANDBOX_TRUSTED_PROXIES must be 0 or more")
    if proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies)  # type: ignore[method-assign]
    app.before_request(_authenticate)
