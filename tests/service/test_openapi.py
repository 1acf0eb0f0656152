"""The contract: /openapi.json is valid OpenAPI 3.1, covers every route and status, its examples
conform to its models, docs/api.md and the README's "API at a glance" say the same, and /docs works
offline."""
import hashlib
import re
from html.parser import HTMLParser
from urllib.parse import urljoin

import pytest
import requests
from openapi_spec_validator import validate

from api import create_app
from api.clients import is_public
from api.openapi import ERROR_CODES
from api.schemas import Error, JobQueued, JobState, RunError, RunResult
from tests.support.servers import REPO

METHODS = {"get", "post", "put", "delete", "patch"}


KEY = "docs-" + "k" * 40
KEYED = {"REDIS_URL": "", "RATE_LIMIT": "100/minute",
         "API_KEYS": f"ops:{hashlib.sha256(KEY.encode()).hexdigest()}:operator"}
"""A public deployment's configuration: keys and rate limits on, so every answer the service can
give is in its document."""


@pytest.fixture(scope="module")
def app():
    return create_app(KEYED)


def served(app) -> dict:
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200 and response.is_json
    return response.get_json()


@pytest.fixture(scope="module")
def doc(app) -> dict:
    return served(app)


@pytest.fixture(scope="module")
def open_doc() -> dict:
    """The document of the default configuration (`make run`): no keys, no rate limits."""
    return served(create_app({"REDIS_URL": ""}))


def responses(doc: dict):
    """(path, method, status, response) of every operation, and of components.responses."""
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                for status, response in operation["responses"].items():
                    yield path, method, status, response
    for response in doc["components"]["responses"].values():
        yield None, None, str(_status_of(response)), response


def _status_of(response: dict) -> int:
    code = next(iter(response["content"]["application/json"]["examples"]))
    return next(status for status, codes in ERROR_CODES.items() if code in codes)


def error_pairs(doc: dict) -> set[tuple[int, str]]:
    """(status, error code) of every error example in the document."""
    return {(int(status), example["value"]["error"]["code"])
            for _, _, status, response in responses(doc) if int(status) >= 400
            for example in response.get("content", {}).get("application/json", {}).get("examples", {})
            .values()}


def test_it_is_valid_openapi_3_1(doc):
    validate(doc)
    assert doc["openapi"].startswith("3.1")


def test_every_route_is_documented_with_its_methods(app, doc):
    routes: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint in ("static", "docs.asset", "docs.init", "playground.static"):
            continue
        if rule.endpoint == "sandbox.mcp":  # JSON-RPC of the MCP spec, its tools' schemas in tools/list
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        routes.setdefault(path, set()).update(m.lower() for m in rule.methods - {"HEAD", "OPTIONS"})
    assert routes == {path: set(item) & METHODS for path, item in doc["paths"].items()}


def test_every_error_status_and_code_is_documented(doc):
    assert error_pairs(doc) == {(status, code) for status, codes in ERROR_CODES.items() for code in codes}


def test_every_response_carries_x_request_id_and_503_retry_after(doc):
    for path, method, status, response in responses(doc):
        assert "X-Request-ID" in response["headers"], (path, method, status)
        if status == "503" and path not in ("/health", "/readyz", "/startupz"):
            assert "Retry-After" in response["headers"], (path, method)
    assert "Location" in doc["paths"]["/execute"]["post"]["responses"]["202"]["headers"]
    assert "Location" in doc["paths"]["/sessions/{session_id}/execute"]["post"]["responses"]["202"]["headers"]


def test_protected_operations_declare_the_keys_and_their_401_and_429(doc):
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKey"] == {**schemes["apiKey"], "type": "apiKey", "in": "header", "name": "X-API-Key"}
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            protected = not is_public(path)
            assert bool(operation.get("security")) == protected, (path, method)
            assert ({"401", "429"} <= set(operation["responses"])) == protected, (path, method)
            if protected:
                assert "WWW-Authenticate" in operation["responses"]["401"]["headers"]
                assert {"Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"} \
                    <= set(operation["responses"]["429"]["headers"])


def test_with_keys_and_limits_off_no_operation_declares_them(open_doc):
    """The default service is open: the document must not claim a key (schemathesis' ignored_auth
    check would then find every operation 'accepting requests without authentication')."""
    validate(open_doc)
    assert open_doc["components"]["securitySchemes"] == {}
    for path, item in open_doc["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                assert not operation.get("security"), (path, method)
                assert not {"401", "403"} & set(operation["responses"]), (path, method)
                limits = operation["responses"].get("429", {}).get("content", {}).get("application/json", {})
                assert set(limits.get("examples", {})) <= {"too_many_sessions"}, (path, method)


def test_metrics_declare_the_operators_403(doc):
    assert "403" in doc["paths"]["/metrics"]["get"]["responses"]
    assert all("403" not in op["responses"] for path, item in doc["paths"].items() if path != "/metrics"
               for m, op in item.items() if m in METHODS)


def test_async_flow_is_described_by_links(doc):
    links = doc["paths"]["/execute"]["post"]["responses"]["202"]["links"]
    operations = {op["operationId"] for item in doc["paths"].values()
                  for method, op in item.items() if method in METHODS}
    assert {link["operationId"] for link in links.values()} == {"getJob", "cancelJob"} <= operations
    assert all(link["parameters"] == {"job_id": "$response.body#/id"} for link in links.values())


@pytest.mark.parametrize("status, model", [("200", RunResult), ("202", JobQueued), ("422", RunError)])
def test_execute_examples_conform_to_the_models(doc, status, model):
    responses = doc["paths"]["/execute"]["post"]["responses"]
    examples = responses[status]["content"]["application/json"]["examples"]
    for example in examples.values():
        model.model_validate(example["value"])
    if status == "422":
        assert set(examples) == set(ERROR_CODES[422])
    if status == "200":
        value = examples["print_vs_result"]["value"]
        assert value["stdout"] and value["result"]


def test_job_and_error_examples_conform_to_the_models(doc):
    for _, _, status, response in responses(doc):
        for example in response.get("content", {}).get("application/json", {}).get("examples", {}).values():
            if int(status) >= 400:
                (RunError if status == "422" else Error).model_validate(example["value"])
    job = doc["paths"]["/jobs/{job_id}"]["get"]["responses"]["200"]["content"]["application/json"]
    for example in job["examples"].values():
        JobState.model_validate(example["value"])


API_PAGE = REPO / "docs" / "api.md"


def readme_at_a_glance() -> str:
    """The README's section "The API at a glance"."""
    text = (REPO / "README.md").read_text()
    start = text.index("\n## The API at a glance")
    return text[start:text.index("\n## ", start + 1)]


def endpoints(doc: dict) -> set[tuple[str, str]]:
    """(method, path) of every operation, the path written as the documentation writes it."""
    return {(method.upper(), re.sub(r"\{(\w+)\}", r"<\1>", re.sub(r"\{(job_id|session_id)\}", "<id>", path)))
            for path, item in doc["paths"].items() for method in item if method in METHODS}


def test_the_api_page_lists_the_same_statuses_and_codes(doc):
    rows = re.findall(r"^\| (\d{3}) \| (.+?) \|", API_PAGE.read_text(), re.MULTILINE)
    page = {(int(status), code) for status, codes in rows for code in re.findall(r"`(\w+)`", codes)}
    assert page == error_pairs(doc)


def test_the_api_page_names_every_endpoint(doc):
    assert set(re.findall(r"^## `(\w+) (\S+)`", API_PAGE.read_text(), re.MULTILINE)) == endpoints(doc)


def test_the_readme_names_every_endpoint(doc):
    rows = re.findall(r"^\| `(\w+) (\S+)` \|", readme_at_a_glance(), re.MULTILINE)
    assert set(rows) == endpoints(doc)


def test_the_readme_names_only_real_statuses_and_codes(doc):
    errors = readme_at_a_glance()
    errors = errors[errors.index("Every error is JSON"):]
    named = set(re.findall(r"`(\w+)`", errors))
    pairs = error_pairs(doc)
    assert named - {str(status) for status, _ in pairs} - {code for _, code in pairs} == set()


class Assets(HTMLParser):
    """The URLs a page loads: scripts, stylesheets, icons, images."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        url = found.get("src") if tag in ("script", "img") else found.get("href") if tag == "link" else None
        if url:
            self.urls.append(url)


def test_docs_page_and_every_asset_come_from_the_service(service_url):
    check_docs_page(service_url)


def check_docs_page(service_url: str) -> None:
    """/docs, every file it loads and the document it shows all come from service_url."""
    page = requests.get(f"{service_url}/docs", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    parser = Assets()
    parser.feed(page.text)
    assert len(parser.urls) >= 3 and not any(re.match(r"\w+:|//", url) for url in parser.urls), parser.urls
    for url in parser.urls:
        asset = requests.get(urljoin(f"{service_url}/docs", url), timeout=10)
        assert asset.status_code == 200 and len(asset.content) > 50, url
        assert asset.url.startswith(service_url)
    init = requests.get(urljoin(f"{service_url}/docs", "docs/docs-init.js"), timeout=10).text
    found = re.search(r'url: "([^"]+)"', init)
    assert found, init
    spec_url = found.group(1)
    spec = requests.get(urljoin(f"{service_url}/docs", spec_url), timeout=10)
    assert spec.status_code == 200 and spec.json()["openapi"].startswith("3.1")
    bundle = requests.get(f"{service_url}/docs/swagger-ui-bundle.js", timeout=10).text
    assert "SwaggerUIBundle" in bundle
