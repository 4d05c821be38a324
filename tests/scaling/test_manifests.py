"""deploy/kubernetes (kustomize base, overlays, the Prometheus Adapter rule) and
deploy/kserve rendered with ``kubectl kustomize`` and checked offline (manifests.check):
strict Kubernetes schemas of several minor versions, the vendored CRD schemas of the
Prometheus Operator and KServe, and Layerscope's rules; broken fixtures fail the same
check."""

from __future__ import annotations

import json
from pathlib import Path

import manifests
import pytest
from manifests import ROOT, check, load, render, without

K8S = ROOT / "deploy" / "kubernetes"
KSERVE = ROOT / "deploy" / "kserve"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


@pytest.mark.parametrize("overlay", ["local", "production"])
def test_overlays_render_and_pass(overlay):
    docs = render(K8S / "overlays" / overlay)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler",
            "PodMonitor", "ConfigMap", "ServiceAccount"} <= kinds
    assert check(docs) == []
    (deployment,) = _kind(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"].split("/")[-1].startswith("layerscope")
    env = {e["name"] for e in container["env"]}
    assert {"LAYERSCOPE_PORT", "PROMETHEUS_MULTIPROC_DIR", "AWS_ACCESS_KEY_ID"} <= env
    (config,) = _kind(docs, "ConfigMap")
    assert config["data"]["LAYERSCOPE_MODEL_REPOSITORY"].startswith("s3://")
    ref = container["envFrom"][0]["configMapRef"]["name"]
    assert ref == config["metadata"]["name"]  # the generated (hashed) name
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's user (Dockerfile)
    (hpa,) = _kind(docs, "HorizontalPodAutoscaler")
    metric = next(m for m in hpa["spec"]["metrics"] if m["type"] == "Pods")
    assert metric["pods"]["metric"]["name"] == "layerscope_requests_in_flight"
    assert all(d["metadata"].get("namespace") == "layerscope" for d in docs
               if d["kind"] != "Namespace")


def test_overlays_differ_where_they_should():
    local, prod = (render(K8S / "overlays" / o) for o in ("local", "production"))
    dl, dp = _kind(local, "Deployment")[0], _kind(prod, "Deployment")[0]
    assert dl["spec"]["replicas"] == 1 and dp["spec"]["replicas"] == 3
    assert dl["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == "Never"
    assert ":" in dp["spec"]["template"]["spec"]["containers"][0]["image"].split("/")[-1]
    assert _kind(local, "Secret") and not _kind(prod, "Secret")  # production: IRSA, no keys
    assert _kind(prod, "HorizontalPodAutoscaler")[0]["spec"]["minReplicas"] == 3


def test_the_prometheus_adapter_rule_feeds_the_hpa_metric():
    docs = render(K8S / "prometheus-adapter")
    assert check(docs) == []
    (config,) = docs
    assert config["metadata"]["namespace"] == "monitoring"
    assert "layerscope_requests_in_flight" in config["data"]["config.yaml"]
    assert "layerscope_requests_in_flight" in manifests.exported_metrics()


def test_kserve_runtime_and_inference_services_pass():
    docs = render(KSERVE)
    assert check(docs) == []
    assert check(load(KSERVE / "inferenceservice-canary.yaml")) == []
    (runtime,) = _kind(docs, "ClusterServingRuntime")
    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"
    assert container["ports"][0]["containerPort"] == 8080
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["PROTOCOL"] == "v2" and env["LAYERSCOPE_PORT"] == "8080"
    assert env["LAYERSCOPE_MODEL_REPOSITORY"] == "/mnt/models"
    assert env["LAYERSCOPE_MODEL_NAME"] == "{{.Name}}"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert {"name": "keras", "version": "3", "autoSelect": True, "priority": 1} in runtime[
        "spec"]["supportedModelFormats"]
    (isvc,) = _kind(docs, "InferenceService")
    predictor = isvc["spec"]["predictor"]
    assert predictor["model"]["storageUri"].startswith("s3://")
    assert predictor["model"]["runtime"] == runtime["metadata"]["name"]
    assert predictor["minReplicas"] < predictor["maxReplicas"]
    assert predictor["scaleMetric"] and predictor["scaleTarget"]
    (canary,) = load(KSERVE / "inferenceservice-canary.yaml")
    assert canary["metadata"]["name"] == isvc["metadata"]["name"]
    assert 0 < canary["spec"]["predictor"]["canaryTrafficPercent"] < 100


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        ("wrong-port-type", "containerPort"),
        ("missing-probe", "no readinessProbe"),
        ("unknown-field", "readinessprobe"),
    ],
)
def test_broken_kubernetes_fixtures_fail_the_same_check(fixture, expected):
    problems = check(render(FIXTURES / fixture))
    assert problems, fixture
    assert any(expected in p for p in problems), problems
    if fixture != "missing-probe":  # a schema error: reported for every Kubernetes version
        versions = {v for v in manifests.KUBERNETES_VERSIONS for p in problems if v in p}
        assert versions == set(manifests.KUBERNETES_VERSIONS), problems


def _isvc():
    return next(d for d in render(KSERVE) if d["kind"] == "InferenceService")


def _runtime():
    return next(d for d in render(KSERVE) if d["kind"] == "ClusterServingRuntime")


def test_broken_kserve_fixtures_fail_the_same_check():
    isvc = _isvc()
    bad = json.loads(json.dumps(isvc))
    bad["spec"]["predictor"]["minReplicas"] = "two"
    assert any("minReplicas" in p for p in check([bad]))
    bad = json.loads(json.dumps(isvc))
    bad["spec"]["predictor"]["model"]["storageURI"] = "s3://x"  # misspelt: strict
    assert any("storageURI" in p for p in check([bad]))
    bad = json.loads(json.dumps(isvc))
    bad["spec"]["predictor"]["scaleMetric"] = "queue_time"  # not one of KServe's
    assert any("scaleMetric" in p for p in check([bad]))
    runtime = _runtime()
    problems = check([without(runtime, "spec", "containers", 0, "readinessProbe")])
    assert any("no readinessProbe" in p for p in problems)
    bad = json.loads(json.dumps(runtime))
    bad["spec"]["containers"][0]["ports"][0]["containerPort"] = "8080"
    assert any("containerPort" in p for p in check([bad]))


def test_broken_custom_resources_of_the_base_fail():
    docs = render(K8S / "base")
    monitor = next(d for d in docs if d["kind"] == "PodMonitor")
    bad = json.loads(json.dumps(monitor))
    bad["spec"]["podMetricsEndpoints"][0]["interval"] = 15  # a duration string
    assert any("interval" in p for p in check([bad]))
    hpa = next(d for d in docs if d["kind"] == "HorizontalPodAutoscaler")
    bad = json.loads(json.dumps(hpa))
    bad["spec"]["metrics"][0]["pods"]["metric"]["name"] = "layerscope_queue_seconds"
    assert any("not exported" in p for p in check([d for d in docs if d is not hpa] + [bad]))


def test_vendored_schemas_name_their_source():
    for name in manifests.CUSTOM.values():
        meta = json.loads((manifests.SCHEMAS / name).read_text())["x-vendored"]
        assert "@v" in meta["source"] and len(meta["sha256"]) == 64, meta
