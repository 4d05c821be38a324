"""What hidden layers learned: probes against scikit-learn's own cross-validation, the unit
atlas against numpy's arg-sort of the served activations, CKA's invariances (hypothesis),
projections, version comparison, the background probe cache, limits and clear errors."""

from __future__ import annotations

import io
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import StratifiedKFold, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from service import create_app  # noqa: E402
from service.introspection import understanding as u  # noqa: E402
from tests.introspection.helpers import image_config, patch_images, publish  # noqa: E402
from training.builder import build_model  # noqa: E402

ROWS = 300


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """Two trained versions of a tiny CNN (patch / no patch) with 300-row references."""
    root = tmp_path_factory.mktemp("understanding")
    keras.utils.set_random_seed(0)
    x, y, _ = patch_images(900, seed=1)
    for epochs in (4, 6):  # versions 1 and 2
        model = build_model(image_config(), input_shape=(28, 28, 1), num_classes=2)
        model.compile(keras.optimizers.Adam(0.003), "sparse_categorical_crossentropy")
        model.fit(x[:600], y[:600], epochs=epochs, batch_size=32, verbose=0)
        publish(
            root,
            model,
            name="patch",
            task="multiclass_classification",
            class_names=["empty", "patch"],
            input_spec={"kind": "image", "shape": [28, 28, 1], "dtype": "float32",
                        "value_range": [0, 255]},
            ref_x=x[600 : 600 + ROWS],
            ref_y=y[600 : 600 + ROWS],
            config=image_config(),
            threshold=None,
        )  # fmt: skip
    return root


@pytest.fixture(scope="module")
def client(repo, tmp_path_factory):
    app = create_app(
        {
            "model_repository": str(repo),
            "load_in_background": False,
            "poll_interval": 0,
            "cache_dir": str(tmp_path_factory.mktemp("cache")),
            "understanding_max_units": 256,
        }
    )
    return app.test_client()


def _reference(repo, version=2):
    with np.load(repo / "patch" / str(version) / "reference.npz") as data:
        return data["x"], data["y"]


def _served(client, x, layers, version=2):
    out = {n: [] for n in layers}
    for start in range(0, len(x), 50):
        body = {
            "instances": x[start : start + 50].tolist(),
            "layers": layers,
            "include": ["values"],
        }
        r = client.post(f"/models/patch/versions/{version}/activations", json=body)
        assert r.status_code == 200, r.json
        for inst in r.json["instances"]:
            for n in layers:
                out[n].append(inst["layers"][n]["values"])
    return {n: np.asarray(v, dtype=np.float64) for n, v in out.items()}


def _probes(client, path="/models/patch/probes"):
    for _ in range(600):
        r = client.get(path)
        if r.status_code == 200:
            return r.json
        assert r.status_code == 202 and r.json["status"] == "computing", r.json
        assert r.headers["Retry-After"] == "2"
        time.sleep(0.2)
    raise AssertionError("probes never finished")


def test_probes_equal_scikit_learns_own_cross_validation(client, repo):
    result = _probes(client)
    x, y = _reference(repo)
    assert result["rows"] == ROWS and result["folds"] == 5 and result["task"] == "classification"
    layers = [r["layer"] for r in result["layers"]]
    assert layers == client.get("/models/patch/layers").json["hidden_layers"]
    served = _served(client, x, layers)
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=1000))
    pixels = x.reshape(len(x), -1).astype(np.float64)
    assert result["baseline"]["features"] == 256  # 784 pixels: sketched like any layer
    raw = cross_val_score(probe, u.Sketch(784, 256, seed=0)(pixels), y, cv=cv, scoring="accuracy")
    assert result["baseline"]["mean"] == pytest.approx(float(raw.mean()), abs=1e-9)
    for row in result["layers"]:
        features = served[row["layer"]].reshape(len(x), -1)
        if row["projected_from"] is not None:  # wider than the limit: the same sketch
            assert row["projected_from"] == features.shape[1] > 256
            index = layers.index(row["layer"]) + 1  # seeds follow the probed layers' order
            features = u.Sketch(features.shape[1], 256, seed=index)(features)
        scores = cross_val_score(probe, features, y, cv=cv, scoring="accuracy")
        assert row["mean"] == pytest.approx(float(scores.mean()), abs=1e-6), row["layer"]
        assert row["folds"] == pytest.approx(scores.tolist(), abs=1e-6)


def test_last_hidden_layer_probe_is_near_the_models_own_accuracy(client, repo):
    result = _probes(client)
    x, y = _reference(repo)
    predicted = np.argmax(_predict(client, x), axis=1)
    accuracy = float((predicted == y).mean())
    last = result["layers"][-1]
    assert abs(last["mean"] - accuracy) <= 0.03, (last, accuracy)


def _predict(client, x):
    probs = []
    for start in range(0, len(x), 100):
        r = client.post(
            "/models/patch/predict", json={"instances": x[start : start + 100].tolist()}
        )
        probs += [
            [p["probabilities"]["empty"], p["probabilities"]["patch"]]
            for p in r.json["predictions"]
        ]
    return np.asarray(probs)


def test_probe_chart_and_cache_shared_across_apps(client, repo, tmp_path_factory):
    first = _probes(client)
    png = client.get("/models/patch/probes.png")
    assert png.status_code == 200 and png.mimetype == "image/png"
    assert Image.open(io.BytesIO(png.data)).size == (640, 360)
    # a second app (another worker) on the same cache reads the file: no recomputation
    cache = client.application.extensions["layerscope_probes"].root
    other = create_app(
        {"model_repository": str(repo), "load_in_background": False, "poll_interval": 0,
         "cache_dir": str(cache), "probes_on_load": False}
    ).test_client()  # fmt: skip
    again = other.get("/models/patch/probes")
    assert again.status_code == 200 and again.json == first


def test_unit_atlas_equals_numpys_argsort(client, repo):
    x, _ = _reference(repo)
    layers = client.get("/models/patch/layers").json["hidden_layers"]
    conv = next(n for n in layers if n.startswith("conv2d"))
    dense = [n for n in layers if n.startswith("dense")][-1]
    served = _served(client, x, [conv, dense])
    for layer, reduce in ((conv, "mean"), (conv, "max"), (dense, "mean")):
        values = served[layer]
        activity = values.reshape(len(x), -1, values.shape[-1])
        activity = activity.max(axis=1) if reduce == "max" else activity.mean(axis=1)
        for unit in (0, values.shape[-1] - 1):
            r = client.get(f"/models/patch/layers/{layer}/units/{unit}/top?n=9&reduce={reduce}")
            assert r.status_code == 200, r.json
            got = [t["index"] for t in r.json["top"]]
            expected = np.argsort(-activity[:, unit], kind="stable")[:9].tolist()
            assert got == expected, (layer, unit, reduce)
            np.testing.assert_allclose(
                [t["activation"] for t in r.json["top"]],
                activity[expected, unit],
                rtol=1e-5,
                atol=1e-6,
            )
            assert all(t["label"] in ("empty", "patch") for t in r.json["top"])
    png = client.get(f"/models/patch/layers/{conv}/units/0/top.png?n=9")
    assert Image.open(io.BytesIO(png.data)).size == (3 * 68 + 4, 3 * 82 + 4)


def test_projection_and_picture(client, repo):
    layers = client.get("/models/patch/layers").json["hidden_layers"]
    r = client.get(f"/models/patch/layers/{layers[-1]}/projection")
    assert r.status_code == 200
    points = np.asarray(r.json["points"])
    assert points.shape == (ROWS, 2) and len(r.json["labels"]) == ROWS
    ratio = r.json["explained_variance_ratio"]
    assert 0 <= ratio[1] <= ratio[0] <= 1
    # PCA: centred coordinates, first axis carries the most variance
    assert abs(points[:, 0].mean()) < 1e-3 * (np.abs(points).max() + 1)
    assert points[:, 0].var() >= points[:, 1].var() - 1e-6
    png = client.get(f"/models/patch/layers/{layers[-1]}/projection.png")
    assert png.mimetype == "image/png" and Image.open(io.BytesIO(png.data)).size == (640, 480)


def test_compare_versions_with_cka(client):
    r = client.get("/models/patch/compare?a=2&b=2")
    assert r.status_code == 200, r.json
    same = np.asarray(r.json["cka"])
    np.testing.assert_allclose(np.diag(same), 1.0, atol=1e-9)
    r = client.get("/models/patch/compare?a=1&b=2")
    matrix = np.asarray(r.json["cka"])
    assert matrix.shape == (len(r.json["layers_a"]), len(r.json["layers_b"]))
    assert ((matrix >= 0) & (matrix <= 1)).all()
    png = client.get("/models/patch/compare.png?a=1&b=2")
    assert png.status_code == 200 and png.mimetype == "image/png"


@pytest.mark.parametrize(
    "path,status,fragment",
    [
        ("/models/patch/compare?a=1", 400, "query parameter 'b' is None"),
        ("/models/patch/compare?a=1&b=9", 404, "has no version 9"),
        ("/models/patch/layers/nope/units/0/top", 404, "no layer 'nope'"),
        ("/models/patch/layers/input/units/0/top", 400, "is a model input"),
        ("/models/patch/layers/dense_1/units/999/top", 404, "received unit=999"),
        ("/models/patch/layers/dense_1/units/0/top?n=0", 400, "'n' is '0'"),
        ("/models/patch/layers/dense_1/units/0/top?reduce=median", 400, "'reduce' is 'median'"),
        ("/models/nope/probes", 404, "model 'nope' not found"),
    ],
)
def test_bad_requests_are_clear(client, path, status, fragment):
    r = client.get(path)
    assert r.status_code == status, r.json
    assert fragment in r.json["error"], r.json["error"]


# values on a 1/8 grid: no subnormal spreads whose squares underflow to a zero Gram
finite = st.integers(-800, 800).map(lambda v: v / 8)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(4, 12), st.integers(1, 6)), elements=finite),
       arrays(np.float64, st.tuples(st.just(12), st.integers(1, 5)), elements=finite),
       st.floats(0.1, 10), st.integers(0, 2**31 - 1))  # fmt: skip
def test_cka_invariances(x, y, scale, seed):
    y = y[: len(x)]
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(x.shape[1], x.shape[1])))
    assume(np.ptp(x, axis=0).max() > 0 and np.ptp(y, axis=0).max() > 0)
    assert u.linear_cka(x, x) == pytest.approx(1.0, abs=1e-9)
    value = u.linear_cka(x, y)
    assert 0.0 <= value <= 1.0
    assert u.linear_cka(x @ q, y) == pytest.approx(value, abs=1e-7)  # orthogonal transform
    assert u.linear_cka(scale * x, y) == pytest.approx(value, abs=1e-7)  # isotropic scaling
    assert u.linear_cka(x, scale * y) == pytest.approx(value, abs=1e-7)
    # the Gram form equals the feature-space form of the definition
    xc, yc = x - x.mean(0), y - y.mean(0)
    den = np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)
    if den > 1e-9:
        assert value == pytest.approx(np.linalg.norm(yc.T @ xc) ** 2 / den, abs=1e-7)


def test_sketch_preserves_inner_products_on_average():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 4000))
    estimates = [float(np.dot(*u.Sketch(4000, 512, seed=s)(np.stack([a, b])))) for s in range(40)]
    assert np.mean(estimates) == pytest.approx(
        float(a @ b), abs=3 * np.std(estimates) / np.sqrt(40) + 1
    )
