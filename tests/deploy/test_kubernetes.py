"""deploy/kubernetes: the manifests parse and agree with docker-compose.yml on image, ports and health paths."""

from __future__ import annotations

from pathlib import Path

import yaml

from server.cli import build_parser
from tests.support import ROOT

K8S = ROOT / "deploy" / "kubernetes"
READY, LIVE = "/v2/health/ready", "/v2/health/live"


def documents() -> dict[str, dict]:
    docs: dict[str, dict] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["apiVersion"] and doc["metadata"]["name"], path
            docs[doc["kind"]] = doc
    return docs


def compose_server() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["server"]


def container_port(container: dict, ref: int | str) -> int:
    if isinstance(ref, int):
        return ref
    return next(p["containerPort"] for p in container["ports"] if p["name"] == ref)


def test_manifests_cover_kserve_and_plain_kubernetes() -> None:
    assert set(documents()) == {"ClusterServingRuntime", "InferenceService", "Deployment", "Service",
                                "HorizontalPodAutoscaler"}


def test_deployment_matches_compose() -> None:
    docs, compose = documents(), compose_server()
    pod = docs["Deployment"]["spec"]["template"]["spec"]
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
    assert [m["mountPath"] for m in c["volumeMounts"] if m["name"] == "models"] == ["/models"]
    # The pod may be killed only after the server's own drain has had its time.
    assert pod["terminationGracePeriodSeconds"] > float(env["MODELBRIDGE_SHUTDOWN_GRACE_SECS"])
    assert pod["securityContext"]["runAsNonRoot"] is True

    service = docs["Service"]
    assert service["spec"]["selector"] == docs["Deployment"]["spec"]["selector"]["matchLabels"]
    assert {p["port"]: container_port(c, p["targetPort"]) for p in service["spec"]["ports"]} == {
        8000: 8000, 8001: 8001, 8002: 8002}
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == docs["Deployment"]["metadata"]["name"]
    assert 1 <= hpa["minReplicas"] < hpa["maxReplicas"]


def test_kserve_runtime_and_inference_service() -> None:
    docs, compose = documents(), compose_server()
    runtime = docs["ClusterServingRuntime"]
    spec = runtime["spec"]
    assert "v2" in spec["protocolVersions"]
    (c,) = spec["containers"]
    assert c["name"] == "kserve-container" and c["image"] == compose["image"]
    args = build_parser().parse_args(c["args"])
    assert args.model_repository == "/mnt/models"  # where KServe's storage initializer puts storageUri
    assert (args.http_port, args.grpc_port, args.metrics_port) == (8000, 8001, 8002)
    assert [p["containerPort"] for p in c["ports"]] == [args.http_port]
    assert c["readinessProbe"]["httpGet"] == {"path": READY, "port": args.http_port}
    assert spec["annotations"]["prometheus.kserve.io/port"] == str(args.metrics_port)

    isvc = docs["InferenceService"]["spec"]["predictor"]["model"]
    assert isvc["runtime"] == runtime["metadata"]["name"]
    assert isvc["protocolVersion"] == "v2"
    assert isvc["modelFormat"]["name"] in {f["name"] for f in spec["supportedModelFormats"]}
    assert isvc["storageUri"].split("://")[0] in {"s3", "gs", "azure", "https"}


def test_images_are_pinned() -> None:
    for path in Path(K8S).glob("*.yaml"):
        assert ":latest" not in path.read_text(), path
