"""deploy/cloudrun, offline (none of it is run here: docs/deploying.md says so): the API's service
and the worker pool against Cloud Run's published v1 schema (the Admin API's discovery document,
vendored), CREMA's config against KEDA's CRD schemas (it is made of KEDA's specs), and both against
what the code says: the probes, the queue's key, the run mode."""
import json
import re
from pathlib import Path
from string import Template
from typing import Any

import jsonschema
import pytest
import yaml
from redis import Redis
from rq import Queue

from shared.queue import QUEUE_NAME
from tests.support.servers import REPO
from tests.unit.test_k8s import keda_schema, strict

CLOUDRUN = REPO / "deploy" / "cloudrun"
RUN_V1 = REPO / "tests" / "support" / "schemas" / "cloud-run-v1" / "run.v1.json"
"""The Cloud Run Admin API v1 discovery document, revision 20261031, as google-api-python-client
2.202.0 ships it (Apache-2.0): its schemas are Cloud Run's Knative Service and WorkerPool."""
PLACEHOLDERS = {"PROJECT": "my-project", "REGION": "europe-west1", "REDIS_HOST": "10.0.0.3"}
"""What docs/deploying.md has envsubst fill in, with example values."""


def load(name: str) -> dict[str, Any]:
    """A file of deploy/cloudrun with its placeholders filled in; only known ones may appear."""
    text = (CLOUDRUN / name).read_text()
    assert set(re.findall(r"\$\{(\w+)\}", text)) <= set(PLACEHOLDERS), name
    found = yaml.safe_load(Template(text).substitute(PLACEHOLDERS))
    assert isinstance(found, dict)
    return found


def discovery_schema(name: str) -> dict[str, Any]:
    """A schema of the discovery document as JSON Schema: its `$ref`s by schema id point into
    $defs, its type `any` is no type at all, and unknown fields are refused (strict)."""
    schemas = json.loads(RUN_V1.read_text())["schemas"]

    def convert(node: Any) -> Any:
        if isinstance(node, list):
            return [convert(item) for item in node]
        if not isinstance(node, dict):
            return node
        return {key: f"#/$defs/{value}" if key == "$ref" else convert(value) for key, value in node.items()
                if (key, value) != ("type", "any")}

    defs = {key: convert(value) for key, value in schemas.items()}
    return strict({"$ref": f"#/$defs/{name}", "$defs": defs})


@pytest.mark.parametrize("name, schema", [("api.yaml", "Service"), ("worker-pool.yaml", "WorkerPool")])
def test_the_service_and_the_worker_pool_validate_against_cloud_runs_schema(name: str, schema: str) -> None:
    found = load(name)
    jsonschema.validate(found, discovery_schema(schema))
    assert found["kind"] == schema


def test_the_schema_check_refuses_what_cloud_run_does_not_know() -> None:
    bad = load("api.yaml")
    (container,) = bad["spec"]["template"]["spec"]["containers"]
    container["securityContext"] = {"capabilities": {"add": ["SYS_ADMIN"]}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, discovery_schema("Service"))


def test_cremas_config_is_kedas_specs_scaling_the_pool_on_rqs_list() -> None:
    config = load("crema.yaml")
    assert (config["apiVersion"], config["kind"]) == ("crema/v1", "CremaConfig")
    so_spec = keda_schema("ScaledObject", "keda.sh/v1alpha1")["properties"]["spec"]
    auth_spec = keda_schema("TriggerAuthentication", "keda.sh/v1alpha1")["properties"]["spec"]
    for auth in config["spec"]["triggerAuthentications"]:
        jsonschema.validate(auth["spec"], auth_spec)
    (scaled,) = config["spec"]["scaledObjects"]
    jsonschema.validate(scaled["spec"], so_spec)
    pool = load("worker-pool.yaml")["metadata"]["name"]
    assert scaled["spec"]["scaleTargetRef"]["name"].endswith(f"/workerpools/{pool}")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == Queue(QUEUE_NAME, connection=Redis()).key


def test_the_api_only_enqueues_and_is_probed_on_its_own_probes() -> None:
    (container,) = load("api.yaml")["spec"]["template"]["spec"]["containers"]
    env = {entry["name"]: entry.get("value") for entry in container["env"]}
    assert env["PYSANDBOX_EXECUTE_VIA_QUEUE"] == "true"
    assert container["command"][-1] == "api"
    assert (container["startupProbe"]["httpGet"]["path"], container["livenessProbe"]["httpGet"]["path"]) \
        == ("/startupz", "/livez")


def test_the_docs_deploy_these_files() -> None:
    page = (REPO / "docs" / "deploying.md").read_text()
    for path in sorted(CLOUDRUN.glob("*.yaml")):
        assert f"deploy/cloudrun/{path.name}" in page, path.name
    assert "not run here" in page.lower()


def test_no_file_is_left_unchecked() -> None:
    assert {path.name for path in Path(CLOUDRUN).glob("*")} == {"api.yaml", "worker-pool.yaml", "crema.yaml"}
