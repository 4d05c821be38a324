"""``--backend jax|tensorflow``: a version trained on JAX (in a subprocess: the pytest
process has Keras on TensorFlow) is served by the TensorFlow service with Keras-under-JAX's
own predictions (<= 1e-5) and re-evaluates under TensorFlow to its recorded test metrics
(within 0.5 %); the backend is recorded in metadata.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service import create_app
from training import train as train_mod
from training.__main__ import main

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "tests/configs/digits.yaml"
FRAUD = ROOT / "tests/configs/fraud_small.yaml"
DATA_DIR = Path(os.environ.get("LAYERSCOPE_DATA_DIR", ROOT.parent / "shared/datasets"))
HAVE_CARDS = (DATA_DIR / "creditcard").is_dir()

# Train through the CLI on JAX, then predict the reference rows with Keras' own JAX
# model loaded from the published file (what the service must reproduce).
JAX_SCRIPT = r"""
import json, sys
from pathlib import Path
import numpy as np
from training.__main__ import main

root, out = Path(sys.argv[1]), Path(sys.argv[2])
runs = json.loads(sys.argv[3])
for name, argv in runs.items():
    assert main(["train", *argv, "--backend", "jax", "--models-root", str(root), "-q"]) == 0
import keras
assert keras.backend.backend() == "jax"
for name in runs:
    folder = root / name / "1"
    model = keras.saving.load_model(folder / "model.keras", safe_mode=True)
    x = np.load(folder / "reference.npz")["x"][:200]
    np.save(out / f"{name}.npy", np.asarray(model.predict(x, verbose=0)))
"""


@pytest.fixture(scope="module")
def jax_versions(tmp_path_factory):
    root, out = tmp_path_factory.mktemp("models"), tmp_path_factory.mktemp("jax")
    runs = {"digits": [str(DIGITS), "--limit", "800"]}
    if HAVE_CARDS:
        runs["fraud-small"] = [str(FRAUD), "--limit", "2000"]
    env = dict(os.environ, LAYERSCOPE_DATA_DIR=str(DATA_DIR), TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=str(ROOT))
    env.pop("KERAS_DISTRIBUTION_NUM_PROCESSES", None)
    r = subprocess.run([sys.executable, "-c", JAX_SCRIPT, str(root), str(out),
                        json.dumps(runs)], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return root, out, list(runs)


def test_jax_trained_versions_record_their_backend(jax_versions):
    root, _, names = jax_versions
    for name in names:
        meta = json.loads((root / name / "1/metadata.json").read_text())
        assert meta["training"] == {"backend": "jax", "processes": 1,
                                    "engine": "keras.Model.fit", "global_batch_size": 64,
                                    "per_process_batch_size": 64}
        assert meta["libraries"]["jax"] and meta["libraries"]["jaxlib"]


def test_tensorflow_service_serves_jax_trained_versions_like_keras_on_jax(jax_versions):
    import keras

    assert keras.backend.backend() == "tensorflow"
    root, out, names = jax_versions
    app = create_app({"model_repository": str(root), "poll_interval": 0,
                      "load_in_background": False, "runtime": "keras",
                      "probes_on_load": False})
    client = app.test_client()
    for name in names:
        x = np.load(root / name / "1/reference.npz")["x"][:200]
        want = np.load(out / f"{name}.npy")
        resp = client.post(f"/v1/models/{name}:predict", json={"instances": x.tolist()})
        assert resp.status_code == 200, resp.get_data(as_text=True)[:500]
        got = np.asarray(resp.json["predictions"], dtype=np.float64).reshape(want.shape)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0, err_msg=name)


def test_tensorflow_reevaluation_reproduces_jax_recorded_metrics(jax_versions):
    root, _, names = jax_versions
    for name in names:
        r = train_mod.evaluate_version(root / name, data_dir=DATA_DIR)
        for key, stored in r["stored"].items():
            if stored is not None:
                assert abs(r["recomputed"][key] - stored) <= 0.005 * abs(stored), (name, key)


def test_tensorflow_is_the_default_and_recorded(tmp_path):
    assert main(["train", str(DIGITS), "--limit", "300", "--epochs", "1", "-q",
                 "--models-root", str(tmp_path), "--data-dir", str(DATA_DIR)]) == 0
    meta = json.loads((tmp_path / "digits/1/metadata.json").read_text())
    assert meta["training"]["backend"] == "tensorflow" and meta["training"]["processes"] == 1


def test_backend_must_be_chosen_before_keras_is_imported(tmp_path, capsys):
    assert main(["train", str(DIGITS), "--backend", "jax", "--models-root",
                 str(tmp_path)]) == 2
    assert "already loaded on 'tensorflow'" in capsys.readouterr().err
    assert not (tmp_path / "digits").exists()
