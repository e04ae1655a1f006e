"""The KubeRay manifest is a RayService the operator accepts: validated against the RayService CRD's own
schema (KubeRay v1.7.0, vendored in configs/kuberay-crd/ with its source), strictly, as
`kubectl apply --validate=strict` would: an unknown field anywhere is an error, not silently pruned."""

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

from scripts.harness.cluster import ingress_env

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
MANIFEST = CONFIGS / "kuberay-rayservice.yaml"
CRD = CONFIGS / "kuberay-crd" / "ray.io_rayservices.yaml"


def strict(schema):
    """The schema with unknown fields refused wherever the CRD lists an object's fields and does not
    keep unknown ones (`x-kubernetes-preserve-unknown-fields`), as the API server's strict validation does."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


@pytest.fixture(scope="module")
def validator():
    crd = yaml.load(CRD.read_text(), Loader=yaml.CSafeLoader)
    (v1,) = [version for version in crd["spec"]["versions"] if version["name"] == "v1"]
    assert crd["spec"]["names"]["kind"] == "RayService" and v1["served"] and v1["storage"]
    schema = strict(v1["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object", "required": ["name"],
                                        "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                                                       "labels": {"type": "object"}, "annotations": {"type": "object"}}}
    return jsonschema.Draft7Validator(schema)


def manifest() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


def errors(validator, document) -> list[str]:
    return [f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]


def test_the_manifest_is_a_rayservice_the_operator_accepts(validator):
    document = manifest()
    assert (document["apiVersion"], document["kind"]) == ("ray.io/v1", "RayService")
    assert errors(validator, document) == []


@pytest.mark.parametrize(("path", "value", "named"), [
    (["spec", "serveConfigv2"], "x", "serveConfigv2"),                                      # a typo at the top
    (["spec", "rayClusterConfig", "headGroupSpec", "template", "spec", "containers", 0, "imagePullPolicy2"], "x",
     "imagePullPolicy2"),                                                                  # deep in a pod template
    (["spec", "rayClusterConfig", "workerGroupSpecs", 0, "replicas"], "two", "replicas"),  # a wrong type
])
def test_the_check_catches_what_the_operator_would_refuse(validator, path, value, named):
    document = copy.deepcopy(manifest())
    place = document
    for key in path[:-1]:
        place = place[key]
    place[path[-1]] = value
    found = errors(validator, document)
    assert found and any(named in error for error in found), found


def test_every_pod_runs_the_haproxy_ingress_in_throughput_optimized_serve():
    """Ray Serve reads RAY_SERVE_ENABLE_HA_PROXY and RAY_SERVE_THROUGHPUT_OPTIMIZED in every process it
    starts (the controller, each node's proxy, the replicas, which then serve HTTP themselves and call each
    other over gRPC), so every pod of the cluster sets them alike, as the HAProxy e2e cluster does."""
    cluster = manifest()["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]
    for pod in pods:
        for container in pod["template"]["spec"]["containers"]:
            settings = {item["name"]: item.get("value") for item in container["env"]}
            for name, value in ingress_env("haproxy").items():
                if not name.endswith("_PORT"):  # the e2e cluster's free ports; the pods keep Ray's defaults
                    assert settings.get(name) == value, (container["name"], name)
