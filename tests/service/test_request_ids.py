"""X-Request-ID on every response, kept when the client's is well-formed; carried into jobs."""
import re

import pytest

from api import create_app

MADE = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(scope="module")
def client():
    return create_app({"MAX_TIMEOUT_S": 2.0, "REDIS_URL": ""}).test_client()


@pytest.mark.parametrize("call, status", [
    (lambda c, h: c.get("/health", headers=h), 200),
    (lambda c, h: c.post("/execute", json={"script": "def main(): return 1"}, headers=h), 200),
    (lambda c, h: c.post("/execute", json={"script": "def main(): 1/0"}, headers=h), 422),
    (lambda c, h: c.post("/execute", json={"script": 1}, headers=h), 400),
    (lambda c, h: c.get("/nowhere", headers=h), 404),
    (lambda c, h: c.put("/execute", headers=h), 405),
    (lambda c, h: c.post("/execute", data="x" * (20 * 2**20), content_type="application/json",
                         headers=h), 413),
    (lambda c, h: c.post("/execute", data="{}", content_type="text/plain", headers=h), 415),
    (lambda c, h: c.post("/execute?async=1", json={"script": "def main(): 1"}, headers=h), 503),
], ids=["200", "200-run", "422", "400", "404", "405", "413", "415", "503"])
def test_every_response_answers_the_clients_id_or_a_new_one(client, call, status):
    kept = call(client, {"X-Request-ID": "Abc-123_x.y"})
    assert kept.status_code == status and kept.headers["X-Request-ID"] == "Abc-123_x.y"
    for bad in ({}, {"X-Request-ID": ""}, {"X-Request-ID": "a" * 129}, {"X-Request-ID": "no spaces"},
                {"X-Request-ID": "semi;colon"}):
        made = call(client, bad)
        assert made.status_code == status and MADE.fullmatch(made.headers["X-Request-ID"]), bad


def test_ids_made_differ(client):
    assert len({client.get("/health").headers["X-Request-ID"] for _ in range(5)}) == 5


def test_the_longest_well_formed_id_is_kept(client):
    rid = "x" * 128
    assert client.get("/health", headers={"X-Request-ID": rid}).headers["X-Request-ID"] == rid
