"""The publishing contract: atomic numbered versions, checksums, nothing left on failure."""

import json
import os
import threading

import keras
import numpy as np
import pytest

from training.publish import (
    PublishError,
    clean_stale_staging,
    existing_versions,
    layer_table,
    sha256_file,
    stage_version,
)


def _tiny_model():
    inputs = keras.Input((4,), name="input")
    x = keras.layers.Normalization(name="normalization")(inputs)
    x = keras.layers.Dense(3, activation="relu", name="dense_1")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="output")(x)
    return keras.Model(inputs, outputs)


def _publish(root, model, **meta):
    with stage_version(root) as staged:
        model.save(staged.path / "model.keras")
        staged.metadata.update(meta)
    return staged


def test_versions_count_up_and_metadata_has_checksums(tmp_path):
    root = tmp_path / "fraud"
    model = _tiny_model()
    first = _publish(root, model, task="binary_classification")
    second = _publish(root, model)
    assert (first.version, second.version) == (1, 2)
    assert existing_versions(root) == [1, 2]
    meta = json.loads((root / "2" / "metadata.json").read_text())
    assert meta["name"] == "fraud" and meta["version"] == 2
    assert meta["model_sha256"] == sha256_file(root / "2" / "model.keras")
    assert meta["files"]["model.keras"]["bytes"] == (root / "2" / "model.keras").stat().st_size
    assert "tensorflow" in meta["libraries"] and "keras" in meta["libraries"]
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]


def test_failure_inside_the_block_leaves_nothing(tmp_path):
    root = tmp_path / "fraud"
    with pytest.raises(RuntimeError, match="boom"):
        with stage_version(root) as staged:
            _tiny_model().save(staged.path / "model.keras")
            raise RuntimeError("boom")
    assert list(root.iterdir()) == []


def test_a_version_without_a_model_file_is_refused(tmp_path):
    root = tmp_path / "fraud"
    with pytest.raises(PublishError, match="model.keras"):
        with stage_version(root) as staged:
            (staged.path / "history.json").write_text("{}")
    assert list(root.iterdir()) == []


@pytest.mark.parametrize("bad", ["../evil", "Fraud", "a/b", ""])
def test_unsafe_model_names_are_refused(tmp_path, bad):
    with pytest.raises(PublishError, match="Received: name="):
        with stage_version(tmp_path / "x", name=bad):
            pass


def test_concurrent_publishers_get_distinct_versions(tmp_path):
    root = tmp_path / "m"
    model = _tiny_model()
    model.save(tmp_path / "src.keras")
    data = (tmp_path / "src.keras").read_bytes()
    versions = []

    def publish():
        with stage_version(root) as staged:
            (staged.path / "model.keras").write_bytes(data)
        versions.append(staged.version)

    threads = [threading.Thread(target=publish) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(versions) == [1, 2, 3, 4, 5, 6]
    assert existing_versions(root) == [1, 2, 3, 4, 5, 6]


def test_layer_table_roles_and_shapes():
    rows = layer_table(_tiny_model())
    by_name = {r["name"]: r for r in rows}
    assert by_name["input"]["role"] == "input"
    assert by_name["normalization"]["role"] == "preprocessing"
    assert by_name["dense_1"] == by_name["dense_1"] | {
        "role": "hidden", "hidden": True, "units": 3, "activation": "relu",
        "output_shape": [None, 3], "params": 15,
    }
    assert by_name["output"]["role"] == "output" and not by_name["output"]["hidden"]


def test_stale_staging_folders_are_cleaned(tmp_path):
    root = tmp_path / "m"
    (root / ".tmp-dead").mkdir(parents=True)
    (root / "1").mkdir()
    removed = clean_stale_staging(root)
    assert [p.name for p in removed] == [".tmp-dead"]
    assert os.listdir(root) == ["1"]


def test_reloaded_version_predicts_the_same(tmp_path):
    model = _tiny_model()
    staged = _publish(tmp_path / "fraud", model)
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    loaded = keras.saving.load_model(staged.final_path / "model.keras", safe_mode=True)
    np.testing.assert_allclose(loaded(x), model(x), atol=1e-6)
