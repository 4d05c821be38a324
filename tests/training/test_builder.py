"""The built model has exactly the declared layers, names, widths, activations, regularisers."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from training.builder import build_model, compile_model
from training.config import load_config

ROOT = Path(__file__).resolve().parents[2]

TABULAR = {
    "name": "tab", "task": "binary_classification", "dataset": "creditcard", "input": "tabular",
    "hidden": [
        {"kind": "dense", "units": 12, "activation": "leaky_relu", "l1": 0.001, "l2": 0.01},
        {"kind": "batch_norm", "momentum": 0.9},
        {"kind": "dropout", "rate": 0.25},
        {"kind": "dense", "units": 6, "activation": "selu", "use_bias": False, "name": "code"},
        {"kind": "layer_norm"},
        {"kind": "dense", "units": 5, "activation": "linear"},
    ],
}
IMAGE = {
    "name": "img", "task": "multiclass_classification", "dataset": "mnist", "input": "image",
    "hidden": [
        {"kind": "conv2d", "filters": 4, "kernel": [3, 5], "strides": 1, "activation": "elu"},
        {"kind": "avg_pool", "pool": 2},
        {"kind": "conv2d", "filters": 6, "kernel": 3, "strides": 2, "padding": "valid",
         "activation": "tanh", "l2": 0.001},
        {"kind": "max_pool", "pool": 2, "strides": 1, "padding": "same"},
        {"kind": "global_max_pool"},
        {"kind": "dense", "units": 7, "activation": "gelu"},
        {"kind": "dense", "units": 3, "activation": "sigmoid"},
    ],
}


def _layers(model):
    return [(layer.name, type(layer).__name__) for layer in model.layers]


def test_tabular_model_layers_names_and_settings():
    cfg = load_config(TABULAR)
    x = np.random.default_rng(0).normal(5.0, 3.0, size=(64, 30)).astype("float32")
    model = build_model(cfg, input_shape=(30,), num_classes=2, adapt_data=x)
    assert _layers(model) == [
        ("input", "InputLayer"), ("normalization", "Normalization"), ("dense_1", "Dense"),
        ("batch_norm_1", "BatchNormalization"), ("dropout_1", "Dropout"), ("code", "Dense"),
        ("layer_norm_1", "LayerNormalization"), ("dense_3", "Dense"), ("output", "Dense"),
    ]
    d1, code, d3, out = (model.get_layer(n) for n in ("dense_1", "code", "dense_3", "output"))
    assert (d1.units, code.units, d3.units, out.units) == (12, 6, 5, 1)
    assert [layer.get_config()["activation"] for layer in (d1, code, d3, out)] == [
        "leaky_relu", "selu", "linear", "sigmoid"]
    reg = d1.kernel_regularizer.get_config()
    assert reg["l1"] == pytest.approx(0.001) and reg["l2"] == pytest.approx(0.01)
    assert code.kernel_regularizer is None and code.use_bias is False and d1.use_bias
    assert model.get_layer("batch_norm_1").momentum == pytest.approx(0.9)
    assert model.get_layer("dropout_1").rate == pytest.approx(0.25)
    # Normalisation statistics come from the adapt data (the training split only).
    norm = model.get_layer("normalization")
    np.testing.assert_allclose(np.ravel(norm.mean), x.mean(axis=0), rtol=1e-4, atol=1e-4)
    assert not any(type(layer).__name__ in ("Lambda", "Activation") for layer in model.layers)


def test_image_model_layers_shapes_and_activations():
    cfg = load_config(IMAGE)
    model = build_model(cfg, input_shape=(28, 28, 1), num_classes=10)
    assert _layers(model) == [
        ("input", "InputLayer"), ("rescaling", "Rescaling"), ("conv2d_1", "Conv2D"),
        ("avg_pool_1", "AveragePooling2D"), ("conv2d_2", "Conv2D"),
        ("max_pool_1", "MaxPooling2D"), ("global_max_pool_1", "GlobalMaxPooling2D"),
        ("dense_1", "Dense"), ("dense_2", "Dense"), ("output", "Dense"),
    ]
    c1, c2 = model.get_layer("conv2d_1"), model.get_layer("conv2d_2")
    assert (c1.filters, c1.kernel_size, c1.padding) == (4, (3, 5), "same")
    assert (c2.filters, c2.strides, c2.padding) == (6, (2, 2), "valid")
    assert c2.kernel_regularizer.get_config()["l2"] == pytest.approx(0.001)
    assert [model.get_layer(n).get_config()["activation"]
            for n in ("conv2d_1", "conv2d_2", "dense_1", "dense_2", "output")] == [
        "elu", "tanh", "gelu", "sigmoid", "softmax"]
    assert model.get_layer("output").units == 10
    assert model.get_layer("rescaling").scale == pytest.approx(1 / 255)
    # 28 -> avg_pool 14 -> conv valid stride 2: 6 -> max_pool same stride 1: 6
    assert tuple(model.get_layer("max_pool_1").output.shape) == (None, 6, 6, 6)
    probs = model(np.full((2, 28, 28, 1), 255.0, dtype="float32"))
    np.testing.assert_allclose(np.sum(probs, axis=1), 1.0, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")  # untrained
def test_committed_default_models_build_and_save_with_safe_mode(tmp_path):
    for name, shape, classes in (("fraud", (30,), 2), ("fashion", (28, 28, 1), 10)):
        cfg = load_config(ROOT / "models" / name)
        model = compile_model(build_model(cfg, input_shape=shape, num_classes=classes), cfg,
                              steps_per_epoch=10)
        hidden = [layer.name for layer in model.layers[2:-1]]
        assert hidden == [spec["name"] for spec in cfg["hidden"]]
        model.save(tmp_path / f"{name}.keras")
        again = keras.saving.load_model(tmp_path / f"{name}.keras", safe_mode=True)
        assert [layer.name for layer in again.layers] == [layer.name for layer in model.layers]


def test_cosine_schedule_decays_to_zero_over_the_configured_epochs():
    from training.builder import make_optimizer

    training = load_config({**TABULAR, "training": {"lr_schedule": "cosine", "epochs": 4,
                                                     "learning_rate": 0.01}}).training
    opt = make_optimizer(training, steps_per_epoch=10)
    schedule = opt._learning_rate
    assert isinstance(schedule, keras.optimizers.schedules.CosineDecay)
    assert float(schedule(0)) == pytest.approx(0.01)
    assert float(schedule(40)) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="Received: steps_per_epoch=None"):
        make_optimizer(training)
    constant = make_optimizer(load_config(TABULAR).training)
    assert float(constant.learning_rate) == pytest.approx(0.001)


def test_label_smoothing_compiles_a_one_hot_loss_and_fit_labels_encodes_the_targets():
    from training.builder import fit_labels

    cfg = load_config({**IMAGE, "training": {"label_smoothing": 0.1}})
    model = compile_model(build_model(cfg, input_shape=(28, 28, 1), num_classes=3), cfg)
    assert isinstance(model.loss, keras.losses.CategoricalCrossentropy)
    assert model.loss.label_smoothing == pytest.approx(0.1)
    y = np.array([2, 0, 1])
    np.testing.assert_array_equal(fit_labels(cfg, y, 3), np.eye(3, dtype=np.float32)[y])
    x = np.random.default_rng(0).uniform(0, 255, (3, 28, 28, 1)).astype("float32")
    logs = model.fit(x, fit_labels(cfg, y, 3), epochs=1, verbose=0).history
    assert set(logs) >= {"loss", "accuracy"}
    plain = load_config(IMAGE)
    assert fit_labels(plain, y, 3) is y
    binary = load_config({**TABULAR, "training": {"label_smoothing": 0.2}})
    y2 = y % 2
    assert fit_labels(binary, y2, 2) is y2  # binary smoothing needs no one-hot targets
    bmodel = compile_model(build_model(binary, input_shape=(30,), num_classes=2), binary)
    assert bmodel.loss.label_smoothing == pytest.approx(0.2)


def test_augment_batch_flips_shifts_and_cuts_out_a_copy():
    from training.builder import augment_batch, augmented

    x = np.arange(2 * 6 * 6, dtype=np.float32).reshape(2, 6, 6, 1) + 1.0
    same = augment_batch(x, {"flip_horizontal": False, "translate": 0, "cutout": 0},
                         np.random.default_rng(0))
    np.testing.assert_array_equal(same, x)
    assert same is not x
    flipped = augment_batch(x, {"flip_horizontal": True}, np.random.default_rng(1))
    for a, b in zip(flipped, x, strict=True):
        assert np.array_equal(a, b) or np.array_equal(a, b[:, ::-1])
    shifted = augment_batch(x, {"translate": 1}, np.random.default_rng(2))
    for a, b in zip(shifted, x, strict=True):  # some shift of b by at most 1 pixel, zero fill
        pad = np.pad(b, ((1, 1), (1, 1), (0, 0)))
        assert any(np.array_equal(a, pad[i:i + 6, j:j + 6]) for i in range(3) for j in range(3))
    cut = augment_batch(x, {"cutout": 2}, np.random.default_rng(3))
    zeros = (cut == 0).sum(axis=(1, 2, 3))
    assert ((zeros >= 1) & (zeros <= 4)).all() and np.array_equal(cut[cut != 0], x[cut != 0])
    assert x.min() == 1.0  # the input is never changed

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.ends = 0

        def __len__(self):
            return 1

        def __getitem__(self, k):
            return x, np.array([0, 1])

        def on_epoch_end(self):
            self.ends += 1

    inner = Batches()
    data = augmented(inner, {"translate": 1}, seed=0)
    first, y = data[0]
    np.testing.assert_array_equal(first, data[0][0])  # (seed, epoch, batch) decide the draws
    data.on_epoch_end()
    assert inner.ends == 1 and len(data) == 1 and y.tolist() == [0, 1]
    assert not np.array_equal(first, data[0][0])
