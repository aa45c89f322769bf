"""deploy/kubernetes: the manifests validate against Kubernetes' own schemas and agree with docker-compose.yml.

Built-in kinds are checked with kubernetes-validate (the API's OpenAPI schemas, strict: an unknown or
misspelt field fails) for the oldest and newest Kubernetes it knows; KServe's kinds have no schema
there, so the containers inside them are checked as core/v1 Containers and the rest field by field.
Nothing here talks to a cluster: the manifests are validated, not applied."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from server.cli import build_parser
from tests.support import ROOT

K8S = ROOT / "deploy" / "kubernetes"
READY, LIVE = "/v2/health/ready", "/v2/health/live"
KSERVE_FIELDS = {"modelFormat", "runtime", "protocolVersion", "storageUri"}  # ModelSpec's own, beside Container's


def documents() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["apiVersion"] and doc["metadata"]["name"], path
            docs.append(doc)
    return docs


def one(kind: str, name: str | None = None) -> dict:
    (doc,) = [d for d in documents() if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    return doc


def compose_server() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["server"]


def container_port(container: dict, ref: int | str) -> int:
    if isinstance(ref, int):
        return ref
    return next(p["containerPort"] for p in container["ports"] if p["name"] == ref)


def quantity(q: str | int) -> float:
    """A Kubernetes quantity (500m, 2, 1Gi, 512Mi) as a number."""
    m = re.fullmatch(r"([0-9.]+)(m|Ki|Mi|Gi|Ti)?", str(q))
    assert m, q
    scale = {None: 1, "m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[m.group(2)]
    return float(m.group(1)) * scale


def check_resources(c: dict) -> None:
    res = c["resources"]
    for kind in ("cpu", "memory"):
        assert 0 < quantity(res["requests"][kind]) <= quantity(res["limits"][kind]), (c["name"], kind, res)


def test_manifests_cover_kserve_and_plain_kubernetes() -> None:
    kinds = sorted(d["kind"] for d in documents())
    assert kinds == sorted(["ClusterServingRuntime", "InferenceService", "PodDisruptionBudget", "Deployment",
                            "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"])


def test_manifests_validate_against_the_kubernetes_schemas() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (a dev extra)")
    from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

    versions = kv.utils.all_versions()
    assert len(versions) > 5
    for version in ("1.29.0", versions[-1]):   # the oldest still in cloud support, the newest known
        for doc in documents():
            if doc["apiVersion"].startswith("serving.kserve.io/"):
                with pytest.raises(SchemaNotFoundError):   # CRDs: checked piecewise below
                    kv.validate(doc, version, strict=True)
                continue
            kv.validate(doc, version, strict=True)
        # KServe's runtime containers and the InferenceService's model are core/v1 Containers.
        runtime_containers = one("ClusterServingRuntime")["spec"]["containers"]
        model = one("InferenceService")["spec"]["predictor"]["model"]
        as_container = {k: v for k, v in model.items() if k not in KSERVE_FIELDS} | {"name": "kserve-container"}
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"},
               "spec": {"containers": [*runtime_containers, as_container]}}
        kv.validate(pod, version, strict=True)
    # The validator does reject what is wrong (a misspelt probe field).
    broken = one("Deployment")
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {"path": READY}
    with pytest.raises(ValidationError):
        kv.validate(broken, versions[-1], strict=True)


def test_deployment_matches_compose() -> None:
    compose = compose_server()
    deployment = one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == compose["image"]
    args = c["args"]
    assert args == compose["command"]
    build_parser().parse_args(args)
    env = {e["name"]: e["value"] for e in c["env"]}
    assert {k: env[k] for k in ("MODELBRIDGE_HTTP_PORT", "MODELBRIDGE_GRPC_PORT", "MODELBRIDGE_METRICS_PORT")} == {
        k: compose["environment"][k] for k in ("MODELBRIDGE_HTTP_PORT", "MODELBRIDGE_GRPC_PORT", "MODELBRIDGE_METRICS_PORT")}
    assert {str(p["containerPort"]) for p in c["ports"]} == {str(p) for p in compose["expose"]}
    http = int(env["MODELBRIDGE_HTTP_PORT"])
    assert c["readinessProbe"]["httpGet"]["path"] == READY and READY in " ".join(compose["healthcheck"]["test"])
    assert container_port(c, c["readinessProbe"]["httpGet"]["port"]) == http
    assert c["livenessProbe"]["httpGet"]["path"] == LIVE
    assert container_port(c, c["livenessProbe"]["httpGet"]["port"]) == http
    check_resources(c)
    assert [m["mountPath"] for m in c["volumeMounts"] if m["name"] == "models"] == ["/models"]
    # A read-only root filesystem: HOME must point at a writable volume.
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert env["HOME"] in {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")}
    # The pod may be killed only after the server's own drain has had its time.
    assert pod["terminationGracePeriodSeconds"] > float(env["MODELBRIDGE_SHUTDOWN_GRACE_SECS"])
    assert pod["securityContext"]["runAsNonRoot"] is True

    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = one("Service")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["port"]: container_port(c, p["targetPort"]) for p in service["spec"]["ports"]} == {
        8000: 8000, 8001: 8001, 8002: 8002}
    hpa = one("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    # The budget covers these pods and still lets a drain proceed at the smallest scale.
    pdb = one("PodDisruptionBudget", "modelbridge")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["maxUnavailable"] == 1 and 2 <= hpa["minReplicas"] < hpa["maxReplicas"]
    assert deployment["spec"]["replicas"] >= hpa["minReplicas"]


def test_kserve_runtime_and_inference_service() -> None:
    compose = compose_server()
    runtime = one("ClusterServingRuntime")
    spec = runtime["spec"]
    assert "v2" in spec["protocolVersions"]
    (c,) = spec["containers"]
    assert c["name"] == "kserve-container" and c["image"] == compose["image"]
    args = build_parser().parse_args(c["args"])
    assert args.model_repository == "/mnt/models"  # where KServe's storage initializer puts storageUri
    assert (args.http_port, args.grpc_port, args.metrics_port) == (8000, 8001, 8002)
    assert [p["containerPort"] for p in c["ports"]] == [args.http_port]
    assert c["readinessProbe"]["httpGet"] == {"path": READY, "port": args.http_port}
    assert c["livenessProbe"]["httpGet"] == {"path": LIVE, "port": args.http_port}
    check_resources(c)
    assert spec["annotations"]["prometheus.kserve.io/port"] == str(args.metrics_port)

    isvc = one("InferenceService")
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["protocolVersion"] == "v2"
    assert model["modelFormat"]["name"] in {f["name"] for f in spec["supportedModelFormats"]}
    assert model["storageUri"].split("://")[0] in {"s3", "gs", "azure", "https", "pvc"}
    check_resources({"name": "model", **model})
    # KServe labels predictor pods serving.kserve.io/inferenceservice=<name>: the budget selects them.
    pdb = one("PodDisruptionBudget", f"{isvc['metadata']['name']}-predictor")["spec"]
    assert pdb["selector"]["matchLabels"] == {"serving.kserve.io/inferenceservice": isvc["metadata"]["name"]}
    assert pdb["maxUnavailable"] == 1 and 2 <= predictor["minReplicas"] < predictor["maxReplicas"]


def test_images_are_pinned() -> None:
    for path in Path(K8S).glob("*.yaml"):
        assert ":latest" not in path.read_text(), path
