"""Checking a callback's signature (docs/callbacks.md): the receiver's side of the service's
`PySandbox-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`."""
import hashlib
import hmac
import time

SIGNATURE_HEADER = "PySandbox-Signature"
DELIVERY_HEADER = "PySandbox-Delivery"


def verify_signature(secret: str, body: bytes, header: str, *, tolerance_s: float = 300,
                     now: float | None = None) -> bool:
    """Whether `header` (the PySandbox-Signature header) signs these exact body bytes with
    `secret`, at a time within `tolerance_s` of now (an old delivery replayed fails)."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        fields.setdefault(name, []).append(value)
    try:
        timestamp = int(fields["t"][0])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, given) for given in fields.get("v1", []))
