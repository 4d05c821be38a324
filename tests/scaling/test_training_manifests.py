"""deploy/kubernetes/training (the data-parallel training and distributed sweep Jobs)
rendered with ``kubectl kustomize`` and checked offline like the serving manifests
(manifests.check: strict Kubernetes schemas of several minor versions, the container rules
without the probes a batch pod does not have, Services selecting pods and naming their
ports), plus the Jobs' own contract (training_job_problems): Indexed, one failed pod fails
the training Job, every pod resolvable through the headless Service named by its
subdomain, the distribution environment consistent with the Job's size, the index from
the completion-index annotation, the trainer image, the data set volume and an s3://
repository."""

from __future__ import annotations

import copy
import re

import pytest
from manifests import ROOT, check, render

TRAINING = ROOT / "deploy" / "kubernetes" / "training"
INDEX_PATH = "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def _docs():
    return render(TRAINING)


def _by(docs, kind, name):
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def _env(container):
    return {e["name"]: e for e in container.get("env") or []}


def _value(env, name, docs):
    """An env var's value: literal, or the key of the (generated) ConfigMap it refers to."""
    e = env.get(name) or {}
    if "value" in e:
        return e["value"]
    ref = (e.get("valueFrom") or {}).get("configMapKeyRef")
    if ref:
        cm = _by(docs, "ConfigMap", ref["name"])
        return cm["data"].get(ref["key"])
    return None


def _expand(arg, env, docs):
    return re.sub(r"\$\((\w+)\)", lambda m: str(_value(env, m.group(1), docs)), arg)


def training_job_problems(docs: list[dict]) -> list[str]:
    problems = []
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    for job in (d for d in docs if d["kind"] == "Job"):
        name, spec = job["metadata"]["name"], job["spec"]
        where = f"Job/{name}"
        pod = spec["template"]["spec"]
        labels = spec["template"]["metadata"].get("labels") or {}
        if spec.get("completionMode") != "Indexed":
            problems.append(f"{where}: not an Indexed Job")
        n = spec.get("completions")
        if spec.get("parallelism") != n:
            problems.append(f"{where}: parallelism {spec.get('parallelism')} != completions {n}"
                            " (every process must run at once)")
        if pod.get("restartPolicy") != "Never":
            problems.append(f"{where}: restartPolicy must be Never (podFailurePolicy)")
        if not (spec.get("podFailurePolicy") or {}).get("rules"):
            problems.append(f"{where}: no podFailurePolicy")
        svc = services.get(pod.get("subdomain"))
        if svc is None:
            problems.append(f"{where}: subdomain {pod.get('subdomain')!r} is no Service here")
        else:
            if svc["spec"].get("clusterIP") != "None":
                problems.append(f"{where}: Service {svc['metadata']['name']} is not headless")
            selector = svc["spec"].get("selector") or {}
            if not selector or any(labels.get(k) != v for k, v in selector.items()):
                problems.append(f"{where}: Service {svc['metadata']['name']} does not select "
                                "its pods")
        hosts = [f"{name}-{i}.{pod.get('subdomain')}" for i in range(n or 0)]
        (container,) = pod["containers"]
        env = _env(container)
        ports = {p["containerPort"] for p in container.get("ports") or []}
        if container["image"].split("/")[-1].split(":")[0] != "layerscope-trainer":
            problems.append(f"{where}: image {container['image']} is not the trainer image")
        args = [_expand(a, env, docs) for a in container.get("args") or []]
        root = args[args.index("--models-root") + 1] if "--models-root" in args else ""
        if not root.startswith("s3://"):
            problems.append(f"{where}: --models-root {root!r} is not an s3:// repository")
        data_dir = _value(env, "LAYERSCOPE_DATA_DIR", docs)
        mounts = {m["mountPath"]: m for m in container.get("volumeMounts") or []}
        if data_dir not in mounts or not mounts[data_dir].get("readOnly"):
            problems.append(f"{where}: LAYERSCOPE_DATA_DIR {data_dir!r} is no read-only volume")
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            if key not in env:
                problems.append(f"{where}: no {key} (the s3 credentials)")
        if args[:1] == ["train"]:
            if "--backend" not in args or args[args.index("--backend") + 1] != "jax":
                problems.append(f"{where}: data-parallel training needs --backend jax")
            if spec.get("backoffLimit") != 0:
                problems.append(f"{where}: backoffLimit must be 0 (one failed pod fails it)")
            rules = spec["podFailurePolicy"]["rules"]
            if not any(r.get("action") == "FailJob" and (r.get("onExitCodes") or {}).get(
                    "operator") == "NotIn" and r["onExitCodes"]["values"] == [0] for r in rules):
                problems.append(f"{where}: a non-zero exit of any pod must fail the Job")
            addresses = (_value(env, "KERAS_DISTRIBUTION_JOB_ADDRESSES", docs) or "").split(",")
            if [a.rsplit(":", 1)[0] for a in addresses] != hosts:
                problems.append(f"{where}: KERAS_DISTRIBUTION_JOB_ADDRESSES {addresses} are "
                                f"not the pods {hosts}")
            if any(int(a.rsplit(":", 1)[1]) not in ports for a in addresses if ":" in a):
                problems.append(f"{where}: the coordinator port is not a container port")
            if _value(env, "KERAS_DISTRIBUTION_NUM_PROCESSES", docs) != str(n):
                problems.append(f"{where}: KERAS_DISTRIBUTION_NUM_PROCESSES != completions {n}")
            index_var = "KERAS_DISTRIBUTION_PROCESS_ID"
        elif args[:1] == ["sweep"]:
            if _value(env, "KERASTUNER_ORACLE_IP", docs) != hosts[0]:
                problems.append(f"{where}: KERASTUNER_ORACLE_IP is not the chief {hosts[0]}")
            port = _value(env, "KERASTUNER_ORACLE_PORT", docs)
            if not (port or "").isdigit() or int(port) not in ports:
                problems.append(f"{where}: KERASTUNER_ORACLE_PORT {port!r} is not a container "
                                "port")
            if "KERASTUNER_TUNER_ID" in env:
                problems.append(f"{where}: KERASTUNER_TUNER_ID is per pod: from the index")
            if (n or 0) < 2:
                problems.append(f"{where}: a chief and at least one worker")
            if spec.get("maxFailedIndexes") != 0 or not spec.get("backoffLimitPerIndex"):
                problems.append(f"{where}: a worker comes back under its index "
                                "(backoffLimitPerIndex), an index failing fails the Job "
                                "(maxFailedIndexes 0)")
            index_var = "LAYERSCOPE_SWEEP_INDEX"
        else:
            problems.append(f"{where}: runs neither train nor sweep: {args}")
            continue
        ref = ((env.get(index_var) or {}).get("valueFrom") or {}).get("fieldRef") or {}
        if ref.get("fieldPath") != INDEX_PATH:
            problems.append(f"{where}: {index_var} is not the completion index")
    return problems


def test_training_jobs_render_and_pass_the_serving_checks_and_their_own():
    docs = _docs()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap", "Job", "Job", "PersistentVolumeClaim", "Service", "Service",
                     "ServiceAccount"]
    assert check(docs) == []
    assert training_job_problems(docs) == []
    assert all(d["metadata"].get("namespace") == "layerscope" for d in docs)
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    # the servers' repository (deploy/kubernetes/base) is where the Jobs publish
    base_cm = next(d for d in render(ROOT / "deploy/kubernetes/base") if d["kind"] == "ConfigMap")
    assert cm["data"]["LAYERSCOPE_MODELS_ROOT"] == base_cm["data"]["LAYERSCOPE_MODEL_REPOSITORY"]
    sweep = _by(docs, "Job", "layerscope-sweep")
    args = sweep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["sweep", "models/fraud"] and "--publish" in args
    for job in ("layerscope-train", "layerscope-sweep"):
        pod = _by(docs, "Job", job)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsUser"] == 10001  # the image's user
        assert pod["serviceAccountName"] == "layerscope-trainer"


def _broken(mutate):
    docs = copy.deepcopy(_docs())
    mutate({(d["kind"], d["metadata"]["name"]): d for d in docs})
    return check(docs) + training_job_problems(docs)


def _container(docs, job):
    return docs[("Job", job)]["spec"]["template"]["spec"]["containers"][0]


def _set_env(docs, job, name, value):
    for e in _container(docs, job)["env"]:
        if e["name"] == name:
            e.pop("valueFrom", None)
            e["value"] = value


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda d: d[("Job", "layerscope-train")]["spec"].update(completions=3, parallelism=3),
     "KERAS_DISTRIBUTION_JOB_ADDRESSES"),
    (lambda d: d[("Job", "layerscope-train")]["spec"].update(backoffLimit=3), "backoffLimit"),
    (lambda d: _set_env(d, "layerscope-train", "KERAS_DISTRIBUTION_PROCESS_ID", "0"),
     "KERAS_DISTRIBUTION_PROCESS_ID is not the completion index"),
    (lambda d: _set_env(d, "layerscope-sweep", "KERASTUNER_ORACLE_IP", "layerscope-sweep"),
     "KERASTUNER_ORACLE_IP"),
    (lambda d: d[("Job", "layerscope-sweep")]["spec"]["template"]["spec"].update(
        subdomain="sweep"), "subdomain 'sweep'"),
    (lambda d: d[("Service", "layerscope-sweep")]["spec"]["ports"][0].update(
        targetPort="grpc"), "targetPort 'grpc'"),
    (lambda d: d[("Job", "layerscope-sweep")]["spec"]["podFailurePolicy"]["rules"][0].update(
        onExitCode={"operator": "In", "values": [2]}), "onExitCode"),  # misspelt: strict
    (lambda d: _container(d, "layerscope-sweep")["securityContext"].update(
        readOnlyRootFilesystem=False), "root file system not read-only"),
    (lambda d: _container(d, "layerscope-train")["args"].__setitem__(5, "/models"),
     "not an s3:// repository"),
])
def test_broken_training_jobs_fail(mutate, expected):
    problems = _broken(mutate)
    assert any(expected in p for p in problems), problems
