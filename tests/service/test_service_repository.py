"""Repository discovery, checksum verification, hot reload and the runtime, in-process."""

from __future__ import annotations

import json
import os
import shutil
import threading

import keras
import numpy as np
import pytest
import svc_factory

from service import create_app
from service.errors import ModelNotFound
from service.repository import FAILED, ModelRepository
from service.runtime import KerasRuntime, LoadError


def test_discovery_ignores_what_is_not_a_version(scratch_repo, tmp_path):
    (scratch_repo / "fraud" / "latest").mkdir()  # not an integer
    (scratch_repo / "fraud" / "0").mkdir()  # not positive
    shutil.copytree(scratch_repo / "fraud" / "1", scratch_repo / "fraud" / "2")
    (scratch_repo / "fraud" / "2" / "metadata.json").unlink()  # incomplete: no metadata
    (scratch_repo / "fraud" / ".tmp-abc").mkdir()  # staging folder
    (scratch_repo / "bad name!").mkdir()
    shutil.copytree(scratch_repo / "fraud", scratch_repo / "bad name!" / "x")
    outside = tmp_path / "outside"
    shutil.copytree(scratch_repo / "fashion", outside)
    os.symlink(outside, scratch_repo / "linked")  # symlink leaving the repository
    os.symlink(outside / "1", scratch_repo / "fashion" / "5")
    found = ModelRepository(scratch_repo).scan()
    assert {n: sorted(v) for n, v in found.items()} == {"fashion": [1], "fraud": [1]}


def test_checksum_failure_is_reported_and_previous_version_serves(scratch_repo):
    repo = ModelRepository(scratch_repo, poll_interval=0)
    repo.load_now()
    svc_factory.publish_corrupt(scratch_repo, scratch_repo / "fraud" / "1")
    repo.refresh()
    state = repo.state("fraud", 2)
    assert state.status == FAILED and "checksum mismatch" in state.reason
    assert repo.default_version("fraud") == 1
    assert repo.get("fraud").version == 1
    assert repo.model_ready("fraud")  # the failed version does not block readiness


def test_new_version_swapped_in_and_deleted_version_unloaded(scratch_repo):
    repo = ModelRepository(scratch_repo, poll_interval=0)
    repo.load_now()
    events = []
    repo.listeners.append(lambda e: events.append((e.kind, e.name, e.version)))
    old = repo.get("fraud")
    path = svc_factory.publish(scratch_repo, "tabular", seed=7)
    assert path.name == "2"
    repo.refresh()
    assert repo.get("fraud").version == 2 and repo.get("fraud", 1) is old
    x = svc_factory.tabular_samples(3)
    expected = np.asarray(svc_factory.load_keras(path)(x, training=False))
    assert np.max(np.abs(repo.get("fraud").raw_predict(x) - expected)) <= 1e-5
    shutil.rmtree(path)
    repo.refresh()
    assert sorted(repo.versions("fraud")) == [1] and repo.get("fraud").version == 1
    assert events == [("loaded", "fraud", 2), ("unloaded", "fraud", 2)]
    assert old.raw_predict(x).shape == (3, 1)  # a request holding v1 still works


@pytest.mark.parametrize(
    "damage,reason",
    [
        ("name", "differs from folder"),
        ("no_sha", "sha256"),
        ("bad_json", "unreadable metadata.json"),
        ("not_keras", "keras could not load"),
    ],
)
def test_bad_versions_fail_with_reason(scratch_repo, damage, reason):
    vdir = scratch_repo / "fraud" / "2"
    shutil.copytree(scratch_repo / "fraud" / "1", vdir)
    meta = json.loads((vdir / "metadata.json").read_text())
    meta["version"] = 2
    if damage == "name":
        meta["name"] = "other"
    elif damage == "no_sha":
        del meta["files"]["model.keras"]["sha256"]
    elif damage == "not_keras":
        (vdir / "model.keras").write_bytes(b"not a zip file")
        meta["files"]["model.keras"]["sha256"] = svc_factory.sha256_bytes(b"not a zip file")
    (vdir / "metadata.json").write_text("{oops" if damage == "bad_json" else json.dumps(meta))
    app = create_app(
        {"model_repository": scratch_repo, "poll_interval": 0, "load_in_background": False}
    )
    client = app.test_client()
    versions = {v["version"]: v for v in client.get("/models/fraud").json["versions"]}
    assert versions[2]["status"] == "failed" and reason in versions[2]["reason"]
    assert versions[1]["status"] == "ready"
    r = client.post("/models/fraud/predict", json={"instances": [[0.0] * 30]})
    assert r.status_code == 200 and r.json["version"] == 1
    r = client.post("/models/fraud/versions/2/predict", json={"instances": [[0.0] * 30]})
    assert r.status_code == 503 and "failed" in r.json["error"]
    tfs = client.get("/v1/models/fraud/versions/2").json["model_version_status"][0]
    assert tfs["state"] == "END" and tfs["status"]["error_code"] != "OK"


def test_only_version_failing_means_not_ready(scratch_repo):
    svc_factory.publish_corrupt(scratch_repo, scratch_repo / "fraud" / "1")
    shutil.rmtree(scratch_repo / "fraud" / "1")
    app = create_app(
        {"model_repository": scratch_repo, "poll_interval": 0, "load_in_background": False}
    )
    client = app.test_client()
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json["models"] == {"fraud": False, "fashion": True}
    r = client.post("/models/fraud/predict", json={"instances": [[0.0] * 30]})
    assert r.status_code == 503 and "no ready version" in r.json["error"]
    assert client.get("/v2/models/fraud/ready").status_code == 503


def test_background_load_then_polling_picks_up_new_version(scratch_repo):
    app = create_app({"model_repository": scratch_repo, "poll_interval": 0.2})
    repo = app.extensions["layerscope"].repository
    assert repo.initial_load_done.wait(60)
    assert app.test_client().get("/readyz").status_code == 200
    svc_factory.publish(scratch_repo, "image", seed=8)
    for _ in range(300):
        if repo.default_version("fashion") == 2:
            break
        threading.Event().wait(0.1)
    repo.stop()
    assert repo.default_version("fashion") == 2


def test_runtime_checksum_checked_before_loading(scratch_repo):
    vdir = scratch_repo / "fraud" / "1"
    data = bytearray((vdir / "model.keras").read_bytes())
    data[100] ^= 1
    (vdir / "model.keras").write_bytes(bytes(data))
    runtime = KerasRuntime(vdir)
    with pytest.raises(LoadError, match="checksum mismatch"):
        runtime.load()
    assert not runtime.ready


def test_runtime_activations_equal_keras_and_are_one_pass(repo):
    runtime = KerasRuntime(repo / "fashion" / "1")
    runtime.load()
    model = svc_factory.load_keras(repo / "fashion" / "1")
    x = svc_factory.image_samples(3, seed=31)
    names = runtime.output_layer_names
    sub = keras.Model(model.inputs[0], [model.get_layer(n).output for n in names])
    expected = dict(zip(names, [np.asarray(v) for v in sub(x, training=False)], strict=True))
    acts = runtime.activations(x, names[::-1] + ["input"])
    assert list(acts) == names[::-1] + ["input"]
    for name in names:
        assert np.max(np.abs(acts[name] - expected[name])) <= 1e-5, name
    assert np.array_equal(acts["input"], x)
    probs, layers = runtime.predict_with_activations(x, ["dense_1"])
    assert np.max(np.abs(probs - expected["output"])) <= 1e-5
    assert list(layers) == ["dense_1"]
    assert runtime.hidden_layer_names[0] == "conv2d_1"
    assert "output" not in runtime.hidden_layer_names
    # built once: different batch sizes do not retrace
    runtime.activations(svc_factory.image_samples(5), ["dense_1"])
    runtime.predict(svc_factory.image_samples(7))
    assert runtime.tensorflow._all_fn.experimental_get_tracing_count() == 1
    assert runtime.tensorflow._predict_fn.experimental_get_tracing_count() == 1


def test_runtime_binary_predict_two_columns_and_thread_safe(repo):
    runtime = KerasRuntime(repo / "fraud" / "1")
    runtime.load()
    model = svc_factory.load_keras(repo / "fraud" / "1")
    xs = [svc_factory.tabular_samples(n, seed=n) for n in range(1, 17)]
    results: dict[int, np.ndarray] = {}

    def work(i):
        results[i] = runtime.predict(xs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, x in enumerate(xs):
        p = np.asarray(model(x, training=False))[:, 0]
        assert results[i].shape == (len(x), 2)
        assert np.max(np.abs(results[i][:, 1] - p)) <= 1e-5
        assert np.allclose(results[i].sum(axis=1), 1.0, atol=1e-6)


def test_max_versions_keeps_newest_loaded(scratch_repo):
    svc_factory.publish(scratch_repo, "tabular", seed=51)
    v3 = svc_factory.publish(scratch_repo, "tabular", seed=52)
    repo = ModelRepository(scratch_repo, poll_interval=0, max_versions=2)
    repo.load_now()
    status = {v: s.status for v, s in repo.versions("fraud").items()}
    assert status == {1: "skipped", 2: "ready", 3: "ready"}
    with pytest.raises(ModelNotFound, match="not loaded"):
        repo.get("fraud", 1)
    # a corrupt newest version takes no slot and evicts nothing
    svc_factory.publish_corrupt(scratch_repo, v3)
    repo.refresh()
    status = {v: s.status for v, s in repo.versions("fraud").items()}
    assert status == {1: "skipped", 2: "ready", 3: "ready", 4: "failed"}
    # a good newer version evicts the oldest loaded one once it is warm
    v5 = svc_factory.publish(scratch_repo, "tabular", seed=53)
    repo.refresh()
    status = {v: s.status for v, s in repo.versions("fraud").items()}
    assert status == {1: "skipped", 2: "skipped", 3: "ready", 4: "failed", 5: "ready"}
    # deleting versions brings older ones back into the window
    shutil.rmtree(v5)
    shutil.rmtree(v3)
    repo.refresh()
    status = {v: s.status for v, s in repo.versions("fraud").items()}
    assert status == {1: "ready", 2: "ready", 4: "failed"}
    assert repo.get("fraud").version == 2
