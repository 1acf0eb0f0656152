"""deploy/k8s, offline: each overlay rendered, every core object validated against Kubernetes' own
schemas (kubernetes-validate ships them), KEDA's objects against KEDA's CRD schemas (vendored in
tests/support/schemas), and the manifests checked against what the code and the Makefile say:
nsjail's privileges, admission by memory, the grace period, the probes, the queue's key."""
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from redis import Redis
from rq import Queue

from api import create_app
from api.job_queue import RQ_BACKSTOP_S
from jail.admission import ADMIT_WAIT_S, BASE_MB, PROCESS_MB, WARM_JAIL_MB
from shared.queue import QUEUE_NAME
from shared.settings import DEFAULTS
from tests.service.test_probes import WORKER_PROBE
from tests.support.images import make_var
from tests.support.servers import REPO

K8S = REPO / "deploy" / "k8s"
OVERLAYS = sorted(path.parent.name for path in (K8S / "overlays").glob("*/kustomization.yaml"))
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
"""The oldest release with securityContext.appArmorProfile (the worker's), and the newest known."""
KEDA = REPO / "tests" / "support" / "schemas" / "keda-v2.20.2"
"""kedacore/keda's config/crd/bases at tag v2.20.2 (Apache-2.0), the CRDs of its ScaledObject and
TriggerAuthentication."""
KEDA_CRDS = {"ScaledObject": "keda.sh_scaledobjects.yaml",
             "TriggerAuthentication": "keda.sh_triggerauthentications.yaml"}


def render(directory: Path) -> Iterator[dict[str, Any]]:
    """The objects of a kustomization. Only `resources` is understood (files, and directories
    with their own kustomization.yaml), as no kustomize binary comes from the package registries
    CI uses: a kustomization with any other field fails here rather than rendering wrongly."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert set(kustomization) <= {"apiVersion", "kind", "resources"}, kustomization
    for resource in kustomization["resources"]:
        path = directory / resource
        if path.is_dir():
            yield from render(path)
        else:
            yield from (found for found in yaml.safe_load_all(path.read_text()) if found)


def rendered(overlay: str) -> dict[tuple[str, str], dict[str, Any]]:
    """{(kind, name): object} of an overlay; no two objects alike."""
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for found in render(K8S / "overlays" / overlay):
        key = (found["kind"], found["metadata"]["name"])
        assert key not in objects, key
        objects[key] = found
    return objects


def strict(schema: Any) -> Any:
    """A CRD's schema that refuses unknown fields, as `kubectl apply --validate=strict` does:
    additionalProperties false wherever properties are listed and nothing else is allowed."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {key: strict(value) for key, value in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema \
            and not schema.get("x-kubernetes-preserve-unknown-fields"):
        schema["additionalProperties"] = False
    return schema


def keda_schema(kind: str, api_version: str) -> dict[str, Any]:
    crd = yaml.safe_load((KEDA / KEDA_CRDS[kind]).read_text())
    group, version = api_version.split("/")
    assert crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind
    served = {entry["name"]: entry for entry in crd["spec"]["versions"]}
    return strict(served[version]["schema"]["openAPIV3Schema"])


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_validates(overlay: str, version: str) -> None:
    for (kind, _), found in rendered(overlay).items():
        if kind in KEDA_CRDS:
            jsonschema.validate(found, keda_schema(kind, found["apiVersion"]))
        else:
            kubernetes_validate.validate(found, version, strict=True)


def test_the_overlays_are_the_two_redis_choices() -> None:
    assert OVERLAYS == ["redis-external", "redis-in-cluster"]
    external, in_cluster = rendered("redis-external"), rendered("redis-in-cluster")
    assert set(in_cluster) - set(external) == {("StatefulSet", "pysandbox-redis"),
                                               ("Service", "pysandbox-redis")}


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict[str, Any]]:
    return rendered("redis-in-cluster")


def container(objects: dict, kind: str, name: str) -> dict[str, Any]:
    (found,) = objects[(kind, name)]["spec"]["template"]["spec"]["containers"]
    return found


def env(of: dict[str, Any]) -> dict[str, str]:
    return {entry["name"]: entry.get("value", "") for entry in of.get("env", [])}


def test_the_worker_gets_exactly_the_makefiles_run_flags(objects: dict) -> None:
    """DOCKER_RUN_FLAGS' capabilities, seccomp and AppArmor, nothing broader: the runtime's
    default capabilities plus the added ones, never privileged, nothing of the host's."""
    flags = shlex.split(make_var("DOCKER_RUN_FLAGS"))
    added = [flags[i + 1] for i, flag in enumerate(flags) if flag == "--cap-add"]
    options = dict(flags[i + 1].split("=") for i, flag in enumerate(flags) if flag == "--security-opt")
    assert len(added) * 2 + len(options) * 2 == len(flags), f"a flag this test does not map: {flags}"
    assert options == {"seccomp": "unconfined", "apparmor": "unconfined"}
    worker = container(objects, "Deployment", "pysandbox-worker")
    assert worker["securityContext"] == {
        "privileged": False, "capabilities": {"add": added},
        "seccompProfile": {"type": "Unconfined"}, "appArmorProfile": {"type": "Unconfined"}}
    pod = objects[("Deployment", "pysandbox-worker")]["spec"]["template"]["spec"]
    assert not {"securityContext", "hostPID", "hostIPC", "hostNetwork", "hostUsers", "volumes"} & set(pod)


def test_the_api_runs_enqueue_only_with_nothing_added(objects: dict) -> None:
    api = container(objects, "Deployment", "pysandbox-api")
    assert env(api)["PYSANDBOX_EXECUTE_VIA_QUEUE"] == "true"
    assert api["securityContext"] == {"allowPrivilegeEscalation": False, "privileged": False,
                                      "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
    pod = objects[("Deployment", "pysandbox-api")]["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] not in (0, 65534)
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}


def mib(quantity: str) -> int:
    assert quantity.endswith("Mi"), quantity
    return int(quantity[:-2])


def test_a_worker_pod_holds_one_run_at_its_largest_limit(objects: dict) -> None:
    """docs/security.md, "Admission by memory": base + one process + its one warm jail + one run
    at PYSANDBOX_MAX_MEMORY_MB fit the memory limit, which is also the request (no overcommit)."""
    worker = container(objects, "Deployment", "pysandbox-worker")
    largest = int(env(worker).get("PYSANDBOX_MAX_MEMORY_MB", DEFAULTS.max_memory_mb))
    limit = mib(worker["resources"]["limits"]["memory"])
    assert BASE_MB + PROCESS_MB + WARM_JAIL_MB + largest <= limit
    assert worker["resources"]["requests"]["memory"] == worker["resources"]["limits"]["memory"]


def test_the_grace_periods_outlast_the_longest_run(objects: dict) -> None:
    worker_pod = objects[("Deployment", "pysandbox-worker")]["spec"]["template"]["spec"]
    longest_job_s = DEFAULTS.max_timeout_s + RQ_BACKSTOP_S + ADMIT_WAIT_S
    assert worker_pod["terminationGracePeriodSeconds"] > longest_job_s
    api_pod = objects[("Deployment", "pysandbox-api")]["spec"]["template"]["spec"]
    stop_budget_s = int(env(container(objects, "Deployment", "pysandbox-api"))["PYSANDBOX_STOP_TIMEOUT_S"])
    assert api_pod["terminationGracePeriodSeconds"] > stop_budget_s > DEFAULTS.max_timeout_s


def test_the_probes_are_the_services_own(objects: dict) -> None:
    routes = {rule.rule for rule in create_app({"REDIS_URL": "", "WARM_JAILS": 0}).url_map.iter_rules()}
    api = container(objects, "Deployment", "pysandbox-api")
    assert [api[probe]["httpGet"]["path"] for probe in ("startupProbe", "livenessProbe", "readinessProbe")] \
        == ["/startupz", "/livez", "/readyz"]
    assert {"/startupz", "/livez", "/readyz"} <= routes
    worker = container(objects, "Deployment", "pysandbox-worker")
    command = ["sh", "-c", WORKER_PROBE.format(path=env(worker)["PYSANDBOX_WORKER_ALIVE_FILE"])]
    assert worker["startupProbe"]["exec"]["command"] == worker["livenessProbe"]["exec"]["command"] == command


def test_keda_scales_on_rqs_list_and_on_running_jobs(objects: dict) -> None:
    scaled = objects[("ScaledObject", "pysandbox-worker")]["spec"]
    assert scaled["scaleTargetRef"]["name"] == "pysandbox-worker"
    redis, prometheus = scaled["triggers"]
    assert redis["type"] == "redis"
    assert redis["metadata"]["listName"] == Queue(QUEUE_NAME, connection=Redis()).key
    assert prometheus["type"] == "prometheus"
    assert prometheus["metadata"]["query"] == 'sum(pysandbox_queue_jobs{state=~"queued|started"})'
    assert ("TriggerAuthentication", redis["authenticationRef"]["name"]) in objects


def test_redis_keeps_its_append_only_file_on_a_claim_and_matches_the_storage_budget(objects: dict) -> None:
    statefulset = objects[("StatefulSet", "pysandbox-redis")]
    redis = container(objects, "StatefulSet", "pysandbox-redis")
    assert redis["command"][-1] == "redis"  # docker/supervise.py's redis mode: appendonly yes
    assert [mount["mountPath"] for mount in redis["volumeMounts"]] == ["/var/lib/redis"]
    assert [claim["metadata"]["name"] for claim in statefulset["spec"]["volumeClaimTemplates"]] == ["data"]
    api = env(container(objects, "Deployment", "pysandbox-api"))
    assert int(env(redis)["PYSANDBOX_REDIS_MEMORY_MB"]) == \
        int(api.get("PYSANDBOX_REDIS_MEMORY_MB", DEFAULTS.redis_memory_mb))
