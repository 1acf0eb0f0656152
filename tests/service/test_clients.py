"""API keys, rate limits per client (in memory and on a real redis-server shared by two apps, as
by two replicas), the trusted-proxy rule, and each client's share of the queue."""
import hashlib
import logging
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from api import create_app
from api.clients import is_public, parse_keys
from api.job_queue import Budget, JobQueue, QueueFull
from jail import Limits
from tests.support.servers import redis_server


def sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


KEYS = {"alice": "alice-" + "k" * 40, "bob": "bob-" + "k" * 40, "ops": "ops-" + "k" * 40}
TRIVIAL = {"script": "def main():\n    return 1"}


@pytest.fixture(scope="module")
def keyed_app(tmp_path_factory):
    """Keys on: alice from the environment variable, bob (with limits of his own) from a file,
    and ops (the operator) in the variable too."""
    keys_file = tmp_path_factory.mktemp("secret") / "keys"
    keys_file.write_text(f"# mounted secret\n\nbob:{sha256(KEYS['bob'])}:2/minute\n")
    return create_app({"REDIS_URL": "", "API_KEYS": f"alice:{sha256(KEYS['alice'])},"
                                                    f"ops:{sha256(KEYS['ops'])}:operator",
                       "API_KEYS_FILE": str(keys_file), "RATE_LIMIT": "100/minute"})


@pytest.fixture(scope="module")
def client(keyed_app):
    return keyed_app.test_client()


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def assert_unauthorized(response, invalid: bool = False) -> None:
    assert response.status_code == 401, response.get_json()
    assert response.get_json()["error"]["code"] == "unauthorized"
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="pysandbox"') and ("invalid_token" in challenge) == invalid


@pytest.mark.parametrize("headers", [
    {"Authorization": f"Bearer {KEYS['alice']}"},
    {"Authorization": f"bearer {KEYS['alice']}"},
    {"X-API-Key": KEYS["alice"]},
    {"Authorization": f"Bearer {KEYS['alice']}", "X-API-Key": KEYS["alice"]},
])
def test_a_valid_key_in_either_header_runs_the_script(client, headers):
    response = client.post("/execute", json=TRIVIAL, headers=headers)
    assert response.status_code == 200 and response.get_json()["result"] == 1


@pytest.mark.parametrize("headers, invalid", [
    ({}, False),
    ({"Authorization": ""}, False),
    ({"Authorization": "Bearer"}, False),
    ({"Authorization": "Bearer "}, False),
    ({"Authorization": f"Basic {KEYS['alice']}"}, False),
    ({"Authorization": f"Bearer {KEYS['alice']} extra"}, False),
    ({"Authorization": KEYS["alice"]}, False),
    ({"X-API-Key": ""}, False),
    ({"X-API-Key": "  "}, False),
    ({"Authorization": f"Bearer {KEYS['alice']}", "X-API-Key": KEYS["bob"]}, False),
    ({"X-API-Key": "wrong"}, True),
    ({"Authorization": "Bearer wrong"}, True),
    ({"X-API-Key": KEYS["alice"][:-1]}, True),
    ({"X-API-Key": KEYS["alice"].upper()}, True),
    ({"X-API-Key": KEYS["alice"] + "\u00e9"}, True),
    ({"X-API-Key": "\u00ff" * 300}, True),
    ({"X-API-Key": sha256(KEYS["alice"])}, True),
])
def test_a_missing_malformed_or_wrong_key_is_401_and_never_echoed(client, headers, invalid, caplog):
    with caplog.at_level(logging.DEBUG):
        response = client.post("/execute", json=TRIVIAL, headers=headers)
    assert_unauthorized(response, invalid)
    for token in " ".join(headers.values()).split():
        if token.lower() not in ("bearer", "basic", "extra"):
            assert token not in response.get_data(as_text=True) and token not in caplog.text


def test_a_right_key_is_never_logged(client, caplog):
    with caplog.at_level(logging.DEBUG):
        assert client.post("/execute", json={"script": "def main(: pass"},
                           headers=bearer("alice")).status_code == 422
    assert KEYS["alice"] not in caplog.text and sha256(KEYS["alice"]) not in caplog.text


def test_every_route_needs_a_key_but_the_public_ones(keyed_app, client):
    """The rule is an allowlist: a route added later (say /metrics) needs a key until it is listed."""
    answered = {}
    for rule in keyed_app.url_map.iter_rules():
        path = rule.rule.replace("<job_id>", "0").replace("<path:name>", "swagger-ui.css") \
            .replace("/playground/<path:filename>", "/playground/app.js")
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            answered[method, path] = client.open(path, method=method, json=TRIVIAL).status_code
    public = {(m, p): s for (m, p), s in answered.items() if is_public(p)}
    assert public and all(status != 401 for status in public.values()), public
    assert {(m, p) for m, p in answered if (m, p) not in public} >= {
        ("POST", "/execute"), ("GET", "/jobs/0"), ("DELETE", "/jobs/0")}
    assert all(status == 401 for key, status in answered.items() if key not in public), answered
    assert client.get("/no-such-path").status_code == 401  # nothing about what exists without a key
    assert client.get("/no-such-path", headers=bearer("alice")).status_code == 404


def test_rate_limits_per_key_with_headers(client):
    """bob's own limit (2/minute) replaces the default (100/minute); it is his budget alone."""
    answers = [client.post("/execute", json=TRIVIAL, headers=bearer("bob")) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    refused = answers[-1]
    assert refused.get_json()["error"]["code"] == "rate_limited"
    assert "2 per 1 minute" in refused.get_json()["error"]["message"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["X-RateLimit-Limit"] == "2" and refused.headers["X-RateLimit-Remaining"] == "0"
    assert int(refused.headers["X-RateLimit-Reset"]) > 0
    assert "Retry-After" not in answers[0].headers and answers[0].headers["X-RateLimit-Remaining"] == "1"
    alice = client.post("/execute", json=TRIVIAL, headers=bearer("alice"))
    assert alice.status_code == 200 and alice.headers["X-RateLimit-Limit"] == "100"
    health = client.get("/health")
    assert health.status_code == 200 and "X-RateLimit-Limit" not in health.headers


def test_keys_are_off_by_default_and_clients_are_addresses_behind_trusted_proxies():
    app = create_app({"REDIS_URL": "", "RATE_LIMIT": "1/minute", "TRUSTED_PROXIES": 1})
    client = app.test_client()

    def from_(address: str) -> int:
        return client.post("/execute", json=TRIVIAL, headers={"X-Forwarded-For": f"6.6.6.6, {address}"},
                           environ_base={"REMOTE_ADDR": "10.0.0.1"}).status_code

    assert [from_("1.1.1.1"), from_("1.1.1.1"), from_("2.2.2.2")] == [200, 429, 200]


def test_without_trusted_proxies_a_forwarded_address_is_ignored():
    client = create_app({"REDIS_URL": "", "RATE_LIMIT": "1/minute"}).test_client()
    codes = [client.post("/execute", json=TRIVIAL, headers={"X-Forwarded-For": address}).status_code
             for address in ("1.1.1.1", "2.2.2.2")]
    assert codes == [200, 429]


@pytest.fixture
def redis_url(tmp_path) -> Iterator[str]:
    with redis_server(tmp_path) as url:
        yield url


def test_replicas_share_one_budget_in_redis(redis_url):
    config = {"REDIS_URL": redis_url, "API_KEYS": f"alice:{sha256(KEYS['alice'])}:3/minute"}
    replicas = [create_app(config).test_client() for _ in range(2)]
    codes = [replicas[n % 2].get("/jobs/0", headers=bearer("alice")).status_code for n in range(4)]
    assert codes == [404, 404, 404, 429]


@pytest.mark.parametrize("text, says", [
    ("al ice:" + "0" * 64, "name"),
    ("alice:" + "0" * 63, "64 hex"),
    ("alice:" + "0" * 64 + ":often", "rate limit"),
    ("alice", "64 hex"),
    ("alice:" + "0" * 64 + ":1/second:2/second", "limits"),
])
def test_bad_key_entries_are_refused_at_start_without_showing_a_hash(text, says):
    with pytest.raises(ValueError, match=says) as raised:
        parse_keys(text, "PYSANDBOX_API_KEYS")
    assert "0" * 63 not in str(raised.value)


def test_two_keys_with_one_name_are_refused():
    with pytest.raises(ValueError, match="same name"):
        create_app({"REDIS_URL": "", "API_KEYS": f"a:{sha256('x')},a:{sha256('y')}"})


def test_each_client_has_its_share_of_the_queue_across_restarts(redis_url):
    """No worker runs here, so jobs stay queued: A's third is refused, B still queues, and a
    new JobQueue (an API restarted, or another replica) counts A's jobs from Redis."""
    queue = JobQueue(redis_url, max_queued=10, max_queued_per_client=2, result_ttl_s=60,
                     budget=Budget(2**30, 2**29))
    first = queue.submit(TRIVIAL["script"], Limits(), None, "r1", "key:a")
    queue.submit(TRIVIAL["script"], Limits(), None, "r2", "key:a")
    restarted = JobQueue(redis_url, max_queued=10, max_queued_per_client=2, result_ttl_s=60,
                     budget=Budget(2**30, 2**29))
    with pytest.raises(QueueFull, match="share"):
        restarted.submit(TRIVIAL["script"], Limits(), None, "r3", "key:a")
    restarted.submit(TRIVIAL["script"], Limits(), None, "r4", "key:b")
    assert restarted.cancel(first.id, "key:a").status == "canceled"
    restarted.submit(TRIVIAL["script"], Limits(), None, "r5", "key:a")


def test_the_queue_share_is_per_key_through_the_api(redis_url):
    config = {"REDIS_URL": redis_url, "MAX_QUEUED_JOBS_PER_CLIENT": 1,
              "API_KEYS": ",".join(f"{name}:{sha256(key)}" for name, key in KEYS.items())}
    client = create_app(config).test_client()

    def queue(name: str):
        return client.post("/execute?async=1", json=TRIVIAL, headers=bearer(name))

    assert queue("alice").status_code == 202
    refused = queue("alice")
    assert refused.status_code == 503 and refused.get_json()["error"]["code"] == "busy"
    assert "share" in refused.get_json()["error"]["message"]
    assert queue("bob").status_code == 202


def test_metrics_need_an_operators_key_and_count_requests_by_key_name(client):
    """/metrics names every tenant and counts their requests: anonymous is 401, a tenant's key
    403 forbidden, the operator's key reads it. Its request counter is labelled by the key's
    name, and requests without a valid key count as anonymous."""
    assert_unauthorized(client.get("/metrics"))
    refused = client.get("/metrics", headers=bearer("alice"))
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "forbidden"
    assert "alice" not in refused.get_data(as_text=True)

    def count(name: str) -> float:
        text = client.get("/metrics", headers=bearer("ops")).get_data(as_text=True)
        return sum(sample.value for family in text_string_to_metric_families(text)
                   for sample in family.samples
                   if sample.name == "pysandbox_http_requests_total"
                   and sample.labels["route"] == "/execute" and sample.labels["client"] == name)

    before = {name: count(name) for name in ("alice", "anonymous")}
    assert client.post("/execute", json=TRIVIAL, headers=bearer("alice")).status_code == 200
    assert_unauthorized(client.post("/execute", json=TRIVIAL))
    assert count("alice") == before["alice"] + 1
    assert count("anonymous") == before["anonymous"] + 1


@pytest.mark.parametrize("entry, limit, operator", [
    ("ops:" + "0" * 64 + ":operator", "", True),
    ("ops:" + "0" * 64 + "::operator", "", True),
    ("ops:" + "0" * 64 + ":5/second:operator", "5/second", True),
    ("ops:" + "0" * 64 + ":operator:5/second", "5/second", True),
    ("t:" + "0" * 64 + ":5/second", "5/second", False),
])
def test_a_key_entry_may_carry_the_operator_role(entry, limit, operator):
    (key,) = parse_keys(entry, "PYSANDBOX_API_KEYS")
    assert (key.rate_limit, key.operator) == (limit, operator)
