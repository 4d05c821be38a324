"""``python -m training import``: any Keras 3 model published as a complete version.

Imports of zoo models (multi-input tabular with its own reference sample, an int32 text
model with a synthetic one, a multi-output model with per-output classes and threshold, a
Sequential image model, a subclassed model) load in the service's repository and predict
what the model itself predicts, through the runtime and through the native and OIP
endpoints; bad options exit 2 quoting what was received and write nothing; an import
SIGKILLed while it stages leaves no version (the repository scan finds nothing) and its
staging folder is ignored, then cleaned once stale."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from service import create_app
from service.repository import ModelRepository
from tests.zoo import builders
from training import import_model as im
from training.__main__ import main
from training.publish import STAGING_PREFIX, sha256_file

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Zoo models saved as .keras files, with their samples and the models themselves."""
    folder = tmp_path_factory.mktemp("keras-files")
    out = {}
    for name in ("tabular", "text", "multi-output", "sequential", "subclassed"):
        model, sample = builders.ZOO[name]()
        path = folder / f"{name}.keras"
        model.save(path)
        out[name] = (path, model, sample)
    return out


def _own(model, sample) -> list[np.ndarray]:
    if isinstance(sample, dict):
        sample = [sample[t.name] for t in model.inputs]
    return [np.asarray(v) for v in keras.tree.flatten(model(sample, training=False))]


def _run(*argv: str) -> int:
    return main(["import", *map(str, argv)])


@pytest.fixture(scope="module")
def imported(files, tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    tab_path, _, tab_sample = files["tabular"]
    ref = tmp_path_factory.mktemp("ref") / "tabular_ref.npz"
    rng = np.random.default_rng(0)
    np.savez(
        ref,
        numeric=rng.normal(size=(40, 8)).astype(np.float32),
        extra=rng.normal(size=(40, 4)).astype(np.float64),  # cast to the input's float32
        y=rng.integers(0, 2, 40),
    )
    features = ",".join(f"f{i}" for i in range(8))
    commands = {
        "tabular": [tab_path, "--reference", ref, "--features", f"numeric={features}"],
        "text": [files["text"][0], "--class-names", "neg,neu,pos"],
        "multi-output": [
            files["multi-output"][0],
            "--class-names",
            "segment=a,b,c,d",
            "--threshold",
            "churn=0.3",
            "--class-names",
            "churn=stays,leaves",
        ],
        "sequential": [files["sequential"][0], "--image", ":0:255", "--class-names", "w,x,y,z"],
        "subclassed": [
            files["subclassed"][0],
            "--custom-objects-module",
            "tests.zoo.custom",
            "--task",
            "multiclass_classification",
            "--class-names",
            "p,q,r",
        ],
    }
    for name, argv in commands.items():
        assert _run(*argv, "--name", name, "--model-dir", repo, "-q") == 0, name
    return repo


def test_a_version_like_a_trained_one(imported, files):
    for name in ("tabular", "text", "multi-output", "sequential", "subclassed"):
        folder = imported / name / "1"
        meta = json.loads((folder / "metadata.json").read_text())
        for key in ("format_version", "name", "version", "task", "class_names", "input", "files"):
            assert key in meta, (name, key)
        assert meta["source"] == "import" and meta["version"] == 1 and meta["name"] == name
        assert sorted(meta["files"]) == ["model.keras", "reference.npz"]
        for file, entry in meta["files"].items():  # a checksum of every file
            assert sha256_file(folder / file) == entry["sha256"]
        assert meta["model_sha256"] == sha256_file(files[name][0])  # byte-for-byte copy
        assert meta["imported_from"]["sha256"] == meta["model_sha256"]
        assert [s["name"] for s in meta["inputs"]][0] == meta["input"]["name"]
        assert not list(imported.joinpath(name).glob(f"{STAGING_PREFIX}*"))
    tab = json.loads((imported / "tabular" / "1" / "metadata.json").read_text())
    assert [s["name"] for s in tab["inputs"]] == ["numeric", "extra"]
    assert tab["inputs"][0]["features"] == [f"f{i}" for i in range(8)]
    assert tab["reference"]["source"] == "given" and tab["reference"]["rows"] == 40
    assert tab["threshold"] == 0.5
    names = [row["name"] for row in tab["layers"]]
    assert {"numeric", "extra", "shared", "shared@1", "residual_a", "gated", "score"} <= set(names)
    with np.load(imported / "tabular" / "1" / "reference.npz") as ref:
        assert sorted(ref.files) == ["extra", "numeric", "y"] and ref["extra"].dtype == np.float32
    text = json.loads((imported / "text" / "1" / "metadata.json").read_text())
    assert text["reference"]["source"] == "synthetic" and text["reference"]["rows"] == 256
    assert "Embedding" in text["reference"]["inputs"]["tokens"]
    assert "gru:sequence" in [row["name"] for row in text["layers"]]
    with np.load(imported / "text" / "1" / "reference.npz") as ref:
        tokens = ref["x"]
    assert tokens.dtype == np.int32 and tokens.shape == (256, builders.STEPS)
    assert tokens.min() >= 0 and tokens.max() < builders.VOCAB  # within the vocabulary
    seq = json.loads((imported / "sequential" / "1" / "metadata.json").read_text())
    assert seq["input"]["kind"] == "image" and seq["input"]["value_range"] == [0, 255]
    assert "backbone/conv" in [row["name"] for row in seq["layers"]]
    sub = json.loads((imported / "subclassed" / "1" / "metadata.json").read_text())
    assert sub["introspection"]["available"] is False
    assert sub["custom_objects_modules"] == ["tests.zoo.custom"]


def test_imports_load_in_the_service_with_equal_predictions(imported, files):
    repository = ModelRepository(imported, poll_interval=0)
    repository.load_now()
    for name in ("tabular", "text", "multi-output", "sequential", "subclassed"):
        state = repository.state(name, 1)
        assert state.status == "ready", (name, state.reason)
        runtime = repository.get(name)
        assert runtime.verified is True and not runtime.bare
        _, model, sample = files[name]
        served = runtime.predict_outputs(sample)
        for got, want in zip(served.values(), _own(model, sample), strict=True):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    multi = repository.get("multi-output")
    by_name = {o["name"]: o for o in multi.outputs}
    assert by_name["segment"]["class_names"] == ["a", "b", "c", "d"]
    assert by_name["churn"]["class_names"] == ["stays", "leaves"]
    assert by_name["churn"]["threshold"] == 0.3
    assert repository.get("subclassed").class_names == ["p", "q", "r"]
    assert repository.get("tabular").inputs[0]["features"][0] == "f0"


def test_imported_multi_input_version_over_http(imported, files):
    """The native API (rows keyed by input name) and OIP (one tensor per input)."""
    app = create_app(
        {"model_repository": imported, "poll_interval": 0, "load_in_background": False}
    )
    client = app.test_client()
    _, model, sample = files["tabular"]
    (want,) = _own(model, sample)
    rows = [
        {"numeric": sample["numeric"][i].tolist(), "extra": sample["extra"][i].tolist()}
        for i in range(len(want))
    ]
    r = client.post("/v1/models/tabular:predict", json={"instances": rows})
    assert r.status_code == 200, r.get_json()
    np.testing.assert_allclose(np.asarray(r.get_json()["predictions"]), want, atol=1e-6)
    body = {
        "inputs": [
            {
                "name": n,
                "shape": list(sample[n].shape),
                "datatype": "FP32",
                "data": sample[n].reshape(-1).tolist(),
            }
            for n in ("numeric", "extra")
        ]
    }
    r = client.post("/v2/models/tabular/infer", json=body)
    assert r.status_code == 200, r.get_json()
    out = r.get_json()["outputs"][0]
    np.testing.assert_allclose(np.asarray(out["data"]).reshape(want.shape), want, atol=1e-6)
    tokens = files["text"][2]
    r = client.post(
        "/v2/models/text/infer",
        json={
            "inputs": [
                {
                    "name": "tokens",
                    "shape": list(tokens.shape),
                    "datatype": "INT32",
                    "data": tokens.reshape(-1).tolist(),
                }
            ]
        },
    )
    assert r.status_code == 200, r.get_json()
    (want,) = _own(files["text"][1], tokens)
    got = np.asarray(r.get_json()["outputs"][0]["data"]).reshape(want.shape)
    np.testing.assert_allclose(got, want, atol=1e-6)


def _bad_reference(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


BAD = [
    # (argv after PATH (with {ref} for a bad reference file), model, words in the message)
    (["--name", "Bad Name"], "tabular", ["--name", "Received: name='Bad Name'"]),
    (["--name", "m", "--threshold", "1.5"], "tabular", ["(0, 1)", "threshold='1.5'"]),
    (["--name", "m", "--task", "ranking"], "tabular", ["--task", "task='ranking'"]),
    (["--name", "m", "--image", "pixels:255:0"], "sequential", ["LOW < HIGH", "pixels:255:0"]),
    (["--name", "m", "--image", "nope"], "sequential", ["no input 'nope'", "image"]),
    (["--name", "m", "--features", "a,b"], "tabular", ["2 inputs", "name the one meant"]),
    (["--name", "m", "--features", "numeric=a,b"], "tabular", ["8 values", "features=['a', 'b']"]),
    (["--name", "m", "--class-names", "a,b"], "text", ["3 classes", "class_names=['a', 'b']"]),
    (["--name", "m", "--class-names", "a,,b"], "text", ["unique, non-empty", "'a,,b'"]),
    (["--name", "m", "--threshold", "0.4"], "text", ["binary_classification", "0.4"]),
    (["--name", "m", "--image", "tokens"], "text", ["declared an image", "[12]"]),
    (["--name", "m", "--reference", "{ref}"], "tabular", ["missing extra", "keys"]),
    (
        ["--name", "m", "--reference", "{ref_shape}"],
        "sequential",
        ["shape (n, 16, 16, 1)", "(5, 8)"],
    ),
    (["--name", "m", "--reference", "missing.npz"], "text", ["no such file", "missing.npz"]),
    (["--name", "m", "--custom-objects-module", "no.such.mod"], "text", ["no.such.mod"]),
]


@pytest.mark.parametrize("argv,model,words", BAD, ids=[" ".join(b[0][2:]) or b[0][1] for b in BAD])
def test_bad_options_exit_2(files, tmp_path, capsys, argv, model, words):
    refs = {
        "{ref}": _bad_reference(tmp_path / "keys.npz", numeric=np.zeros((4, 8), np.float32)),
        "{ref_shape}": _bad_reference(tmp_path / "shape.npz", x=np.zeros((5, 8), np.float32)),
    }
    argv = [str(refs.get(a, a)) for a in argv]
    repo = tmp_path / "models"
    capsys.readouterr()
    assert _run(files[model][0], *argv, "--model-dir", repo, "-q") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid import: "), err
    for word in words:
        assert word in err, (word, err)
    assert not repo.exists() or not any(repo.rglob("*.keras"))  # nothing written


def test_not_a_model_file_exits_2_without_tensorflow(tmp_path):
    """A real process: the path is checked before TensorFlow is imported."""
    text = tmp_path / "model.keras"
    text.write_text("not a zip")
    for path in (tmp_path / "absent.keras", text):
        proc = subprocess.run(
            [sys.executable, "-m", "training", "import", str(path), "--name", "m",
             "--model-dir", str(tmp_path / "models")],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert f"Received: PATH={str(path)!r}" in proc.stderr
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("stage", [4, 5])
def test_import_killed_midway_leaves_no_version(files, tmp_path, stage):
    """SIGKILL when the import reports stage 4 (files being written into the staging
    folder) or 5 (the staged version being loaded): no finally block runs."""
    repo = tmp_path / "models"
    path = files["sequential"][0]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "training", "import", str(path), "--name", "victim",
         "--model-dir", str(repo)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith(f"[import {stage}/"):
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.wait(60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    leftovers = list((repo / "victim").glob(f"{STAGING_PREFIX}*"))
    assert len(leftovers) == 1  # the killed run's staging folder ...
    assert ModelRepository(repo).scan() == {}  # ... is no version
    assert [p.name for p in (repo / "victim").iterdir()] == [leftovers[0].name]

    # a fresh leftover is kept (a slow import may still own it); once stale it goes, but
    # never while a live import holds its lock
    assert im.clean_stale(repo / "victim") == []
    hour_ago = time.time() - 2 * im.STALE_STAGING_SECONDS
    live = repo / "victim" / f"{STAGING_PREFIX}live"
    live.mkdir()
    for folder in (leftovers[0], live):
        os.utime(folder, (hour_ago, hour_ago))
    fd = im._locked(live)
    try:
        assert im.clean_stale(repo / "victim") == [leftovers[0]]
    finally:
        os.close(fd)
    assert live.is_dir() and not leftovers[0].exists()
