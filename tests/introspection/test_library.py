"""Model-level introspection: activations vs Keras, statistics, attributions, pictures."""

from __future__ import annotations

import io

import keras
import numpy as np
import pytest
from PIL import Image

from service.introspection import attribution, pictures, stats

from .helpers import FEATURES, last_conv, patch_images, transactions


@pytest.mark.parametrize("name", ["patch", "txn"])
def test_every_layer_equals_keras_submodel(runtimes, repo, name):
    rt = runtimes[name]
    model = keras.saving.load_model(repo / name / "1" / "model.keras", safe_mode=True)
    x = patch_images(5, seed=9)[0] if name == "patch" else transactions(5, seed=9)[0]
    names = [layer.name for layer in model.layers]
    got = rt.activations(x, names)  # every layer, one call
    assert list(got) == names
    for layer in model.layers:
        want = np.asarray(keras.Model(model.inputs, layer.output)(x, training=False))
        assert got[layer.name].shape == want.shape, layer.name
        np.testing.assert_allclose(got[layer.name], want, atol=1e-5, rtol=0, err_msg=layer.name)


def test_hidden_layers_follow_the_naming_contract(runtimes):
    assert runtimes["patch"].hidden_layer_names[:3] == ["conv2d_1", "batch_norm_1", "max_pool_1"]
    assert "flatten_1" in runtimes["patch"].hidden_layer_names
    assert runtimes["txn"].hidden_layer_names[0] == "dense_1"
    for rt in runtimes.values():
        assert "output" not in rt.hidden_layer_names
        assert not {"input", "rescaling", "normalization"} & set(rt.hidden_layer_names)


def test_relu_inactive_fraction_equals_numpy_count(runtimes):
    x = transactions(16, seed=3)[0]
    rt = runtimes["txn"]
    acts = rt.activations(x, ["dense_1"])["dense_1"]
    got = stats.instance_stats(acts, "relu")
    for row, s in zip(acts, got, strict=True):
        assert s["inactive_fraction"] == pytest.approx(np.count_nonzero(row <= 0) / row.size)
        assert s["l2_norm"] == pytest.approx(float(np.sqrt((row.astype(np.float64) ** 2).sum())))
        assert s["max"] == pytest.approx(float(row.max()))
    # conv layer: counted over every position of every filter
    img = patch_images(3, seed=3)[0]
    conv = runtimes["patch"].activations(img, ["conv2d_1"])["conv2d_1"]
    got = stats.instance_stats(conv, "relu")
    assert [s["inactive_fraction"] for s in got] == pytest.approx(
        [np.count_nonzero(c <= 0) / c.size for c in conv]
    )


def test_top_k_and_other_activation_rules():
    values = np.array([[0.3, -1.0, 2.0, 0.0, 1.5]])
    (s,) = stats.instance_stats(values, "relu", top_k=3)
    assert [t["unit"] for t in s["top_k"]] == [2, 4, 0]
    assert s["top_k"][0]["value"] == 2.0
    assert s["inactive_fraction"] == pytest.approx(2 / 5)
    assert stats.instance_stats(np.array([[0.005, 0.5]]), "sigmoid")[0]["inactive_fraction"] == 0.5
    assert stats.instance_stats(np.array([[-0.005, -0.5]]), "tanh")[0]["inactive_fraction"] == 0.5
    conv = np.zeros((1, 2, 2, 3))
    conv[0, :, :, 1] = 1.0
    conv[0, 0, 0, 2] = 2.0  # channel 2 mean 0.5 < channel 1 mean 1.0
    (c,) = stats.instance_stats(conv, "relu", top_k=2)
    assert [t["unit"] for t in c["top_k"]] == [1, 2]


def test_reference_stats_dead_units_and_spread():
    ref = np.array([[0.0, 1.0, -2.0], [0.0, 3.0, 1.0], [-1.0, 2.0, -1.0]])
    got = stats.reference_unit_stats(ref, "relu")
    assert got["dead_units"] == [0] and got["dead_fraction"] == pytest.approx(1 / 3)
    assert got["per_unit"]["active_fraction"] == pytest.approx([0.0, 1.0, 1 / 3])
    assert got["per_unit"]["mean"] == pytest.approx(ref.mean(axis=0))
    assert got["per_unit"]["std"] == pytest.approx(ref.std(axis=0))


def test_reference_stats_are_computed_once_per_runtime(runtimes):
    rt = runtimes["txn"]
    calls = []

    def compute():
        calls.append(1)
        ref = np.load(rt.path / "reference.npz")["x"]
        return stats.compute_reference_stats(rt.activations, ref, ["dense_1"], {"dense_1": "relu"})

    cache = stats.ReferenceStatsCache()
    first = cache.get(rt, compute)
    assert cache.get(rt, compute) is first and len(calls) == 1
    assert first["dense_1"]["samples"] == 128


def _quadrant_mass(cam: np.ndarray) -> np.ndarray:
    h, w = cam.shape
    return np.array(
        [
            cam[: h // 2, : w // 2].sum(),
            cam[: h // 2, w // 2 :].sum(),
            cam[h // 2 :, : w // 2].sum(),
            cam[h // 2 :, w // 2 :].sum(),
        ]
    )


def test_gradcam_heat_lands_in_the_patch_quadrant(runtimes):
    explainers = attribution.Explainers(runtimes["patch"].model)
    x, y, quad = patch_images(16, seed=5)
    x, quad = x[y == 1], quad[y == 1]
    cam = explainers.gradcam()  # default: last conv layer
    assert cam.layer == last_conv()
    out = cam(x, np.full(len(x), 1, np.int32))
    assert out["cam_input"].shape == (len(x), 28, 28)
    assert out["cam"].max() <= 1.0 + 1e-6 and out["cam"].min() >= 0.0
    hits = [int(np.argmax(_quadrant_mass(c))) for c in out["cam_input"]]
    assert hits == list(quad)
    # predicted class (-1) is the patch class on these images, and the function is cached
    pred = explainers.gradcam(last_conv())(x, np.full(len(x), -1, np.int32))
    assert explainers.gradcam() is cam
    assert (pred["class"] == 1).all()


def test_gradcam_rejects_a_flat_layer(runtimes):
    with pytest.raises(ValueError, match="flatten_1"):
        attribution.Explainers(runtimes["patch"].model).gradcam("flatten_1")


@pytest.mark.parametrize("baseline", ["mean", "zeros"])
def test_integrated_gradients_completeness(runtimes, baseline):
    rt = runtimes["txn"]
    x = transactions(32, seed=7)[0]
    ref = np.load(rt.path / "reference.npz")["x"]
    base = ref.mean(axis=0) if baseline == "mean" else np.zeros(30, np.float32)
    cls = np.where(np.arange(32) % 2, 1, -1).astype(np.int32)  # fraud, or the predicted class
    # 256 steps: the Riemann sum crosses ReLU kinks; at 64 steps a row of some initialisations
    # missed completeness by 5-6 %
    out = attribution.Explainers(rt.model).integrated_gradients()(x, base, cls, steps=256)
    assert out["attributions"].shape == (32, 30)
    probs = rt.predict(x)
    assert (out["class"][1::2] == 1).all()
    assert (out["class"][::2] == probs[::2].argmax(axis=1)).all()
    np.testing.assert_allclose(out["f_x"], probs[np.arange(32), out["class"]], atol=1e-5)
    big = np.abs(out["delta"]) > 0.05  # relative error is meaningful for a real change
    assert big.sum() >= 3
    assert (out["relative_error"][big] < 0.05).all(), out["relative_error"]
    direct = out["attributions"].sum(axis=1) - (out["f_x"] - out["f_baseline"])
    np.testing.assert_allclose(out["absolute_error"], np.abs(direct), atol=1e-5)


def _png(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    assert img.format == "PNG"
    return img


def test_picture_sizes():
    grid = _png(pictures.feature_map_grid(np.random.rand(14, 14, 8)))
    assert grid.size == pictures.grid_size(8) == (3 * 66 + 2, 3 * 66 + 2)
    strip = _png(pictures.heat_strip(np.random.rand(1, 16)))
    assert strip.size == pictures.strip_size(16) == (512, 32)
    assert _png(pictures.heat_strip(np.random.rand(2, 1000))).size == (1000, 64)
    overlay = _png(pictures.gradcam_overlay(np.random.rand(28, 28, 1) * 255, np.random.rand(7, 7)))
    assert overlay.size == (pictures.OVERLAY, pictures.OVERLAY)
    bars = _png(pictures.attribution_bars(["a", "b", "c"], np.array([1.0, -0.5, 0.0])))
    assert bars.size == (pictures.BAR_WIDTH, 3 * pictures.BAR_ROW)


def test_heat_strip_colours_follow_the_values():
    img = np.asarray(_png(pictures.heat_strip(np.array([[0.0, 1.0]]))))
    assert tuple(img[0, 0]) == (68, 1, 84) and tuple(img[0, -1]) == (253, 231, 37)


@pytest.mark.parametrize("name", ["fraud", "fashion", "mnist"])
def test_committed_default_configs_every_layer_equals_keras(tmp_path, name):
    """The full-size default models (untrained) built from models/<name>/model.yaml."""
    from service.runtime import KerasRuntime
    from training.builder import build_model
    from training.config import ModelConfig

    from .helpers import ROOT, publish

    path = ROOT / "models" / name / "model.yaml"
    if not path.is_file():
        pytest.skip(f"{path} is not committed yet")
    cfg = ModelConfig.from_file(path)
    tabular = cfg["input"] == "tabular"
    x = transactions(3, seed=4)[0] if tabular else patch_images(3, seed=4)[0]
    shape, classes = ((30,), 2) if tabular else ((28, 28, 1), 10)
    model = build_model(
        cfg,
        input_shape=shape,
        num_classes=classes,
        adapt_data=transactions(200, seed=6)[0] if tabular else None,
    )
    spec = {"kind": cfg["input"], "shape": list(shape), "dtype": "float32"}
    if tabular:
        spec["features"] = FEATURES
    publish(
        tmp_path,
        model,
        name=name,
        task=cfg.task,
        input_spec=spec,
        class_names=[str(i) for i in range(classes)],
        ref_x=x,
        ref_y=np.zeros(3),
        config=cfg.get_config(),
        threshold=0.5 if tabular else None,
    )
    rt = KerasRuntime(tmp_path / name / "1")
    rt.load()
    got = rt.activations(x, rt.layer_names)
    for layer in model.layers:
        want = np.asarray(keras.Model(model.inputs, layer.output)(x, training=False))
        np.testing.assert_allclose(got[layer.name], want, atol=1e-5, rtol=0, err_msg=layer.name)
    assert rt.hidden_layer_names == [h["name"] for h in cfg["hidden"]]


def test_gradcam_on_a_one_unit_sigmoid_model():
    """Binary image models: class 1 explains +logit, class 0 explains -logit."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((12, 12, 1), name="input")
    h = keras.layers.Conv2D(3, 3, padding="same", activation="relu", name="conv2d_1")(inputs)
    h = keras.layers.Flatten(name="flatten_1")(h)
    out = keras.layers.Dense(1, activation="sigmoid", name="output")(h)
    model = keras.Model(inputs, out)
    x = np.random.default_rng(0).uniform(0, 1, (4, 12, 12, 1)).astype(np.float32)
    cam = attribution.Explainers(model).gradcam()
    p = np.asarray(model(x))[:, 0]
    pred = cam(x, np.full(4, -1, np.int32), threshold=0.5)
    assert (pred["class"] == (p >= 0.5)).all()
    one, zero = cam(x, np.ones(4, np.int32)), cam(x, np.zeros(4, np.int32))
    assert one["cam"].shape == (4, 12, 12)
    # the two class maps are ReLUs of opposite sums: where one is positive the other is 0
    assert not np.any((one["cam"] > 1e-6) & (zero["cam"] > 1e-6))
    assert max(one["cam"].max(), zero["cam"].max()) == pytest.approx(1.0)
