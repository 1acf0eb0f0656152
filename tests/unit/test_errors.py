"""The error catalog (api/errors.py): the OpenAPI list and the HTTP table are views of it, and the
422 codes are the jail's statuses of a script's fault."""
from api.errors import CATALOG, HTTP_CODES, QUEUE_UNAVAILABLE, SANDBOX_UNAVAILABLE, by_status
from jail import Status


def test_the_documented_codes_are_the_catalog_but_job_state_ones():
    documented = {code for codes in by_status().values() for code in codes}
    assert documented == set(CATALOG) - {"canceled"}
    assert all(CATALOG[code].status == status for status, codes in by_status().items() for code in codes)


def test_the_422_codes_are_the_jails_faults():
    assert set(by_status()[422]) == {status.value for status in Status} - {
        "ok", "canceled", "memory_unavailable"}
    assert CATALOG["memory_unavailable"].status == 503, "the service's want of memory, not the script's"


def test_flasks_http_errors_have_their_own_codes():
    assert {status: code.name for status, code in HTTP_CODES.items()} == {
        400: "invalid_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
        415: "unsupported_media_type", 429: "rate_limited"}


def test_a_code_carries_its_status_and_retry_after():
    error = SANDBOX_UNAVAILABLE("down")
    assert (error.status, error.code, error.headers) == (503, "sandbox_unavailable", {"Retry-After": "30"})
    assert QUEUE_UNAVAILABLE("gone", retry_after_s=7).headers == {"Retry-After": "7"}
    assert error.to_dict() == {"error": {"code": "sandbox_unavailable", "message": "down"}}
