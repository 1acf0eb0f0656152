"""The callback destinations' checks and the signature (shared/callbacks.py), without a service:
a listed name that resolves to a loopback address is refused unless a listed CIDR holds it."""
import hashlib
import hmac

import pytest
from pysandbox_client import verify_signature

from shared.callbacks import CallbackRefused, Destinations, signature
from shared.settings import load


def destinations(hosts: str) -> Destinations:
    found = Destinations.of(load({"CALLBACK_HOSTS": hosts, "CALLBACK_SECRET": "s"}, {}))
    assert found is not None
    return found


def test_off_unless_hosts_are_listed_and_never_without_a_secret() -> None:
    assert Destinations.of(load({}, {})) is None
    with pytest.raises(ValueError, match="PYSANDBOX_CALLBACK_SECRET"):
        Destinations.of(load({"CALLBACK_HOSTS": "hooks.example.com"}, {}))


def test_a_listed_name_that_resolves_to_loopback_is_refused_unless_a_cidr_allows_it() -> None:
    with pytest.raises(CallbackRefused, match="resolves to 127.0.0.1"):
        destinations("localhost").check("http://localhost:9/hook")
    host, addresses = destinations("localhost, 127.0.0.0/8, ::1/128").check("http://localhost:9/hook")
    assert host == "localhost" and "127.0.0.1" in map(str, addresses)


@pytest.mark.parametrize("url", ["http://127.0.0.2/x", "http://[::1]/x", "http://0x7f000001/x",
                                 "http://user@10.0.0.1/x", "file:///etc/passwd", "http:///x"])
def test_addresses_outside_the_listed_cidrs_are_refused(url: str) -> None:
    with pytest.raises(CallbackRefused):
        destinations("127.0.0.1/32").check(url)


def test_the_signature_is_hmac_sha256_of_time_dot_body() -> None:
    header = signature("secret", 1700000000, b'{"id": "x"}')
    expected = hmac.new(b"secret", b'1700000000.{"id": "x"}', hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert verify_signature("secret", b'{"id": "x"}', header, now=1700000100)
    assert not verify_signature("secret", b'{"id": "x"}', header, now=1700000400)  # too old
    assert not verify_signature("secret", b'{"id": "y"}', header, now=1700000100)
