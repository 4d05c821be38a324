"""model.yaml validation: defaults, round trips, and one message per kind of mistake."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from training.config import (
    ConfigError,
    ModelConfig,
    apply_overrides,
    load_config,
    validate_config,
)

ROOT = Path(__file__).resolve().parents[2]
FRAUD = yaml.safe_load((ROOT / "models/fraud/model.yaml").read_text())
FASHION = yaml.safe_load((ROOT / "models/fashion/model.yaml").read_text())


def test_committed_configs_are_valid():
    for name in ("fraud", "fashion", "mnist"):
        cfg = load_config(ROOT / "models" / name)
        assert cfg.name == name
    for path in (ROOT / "tests/configs").glob("*.yaml"):
        load_config(path)


def test_defaults_are_filled_in_and_names_generated():
    cfg = validate_config({
        "name": "m", "task": "binary_classification", "dataset": "creditcard",
        "input": "tabular",
        "hidden": [{"kind": "dense", "units": 4}, {"kind": "dropout", "rate": 0.1},
                   {"kind": "dense", "units": 2, "name": "bottleneck"},
                   {"kind": "dense", "units": 2}],
    })
    assert [h["name"] for h in cfg["hidden"]] == ["dense_1", "dropout_1", "bottleneck",
                                                  "dense_3"]
    assert cfg["hidden"][0] == {"kind": "dense", "name": "dense_1", "units": 4,
                                "activation": "relu", "l1": 0.0, "l2": 0.0, "use_bias": True}
    assert cfg["preprocessing"] == {"normalize": True}
    assert cfg["output"]["activation"] == "sigmoid"
    assert cfg["training"]["class_weight"] == "balanced"
    assert cfg["threshold"] == {"objective": "best_f1"}
    assert cfg["dataset"] == {"name": "creditcard", "limit": None, "synthetic": False}


def test_round_trip_is_stable():
    cfg = ModelConfig.from_config(FASHION)
    again = ModelConfig.from_config(cfg.get_config())
    assert again == cfg
    assert ModelConfig.from_config(yaml.safe_load(cfg.to_yaml())) == cfg
    assert cfg["preprocessing"]["rescale"] == pytest.approx(1 / 255)
    assert cfg["training"]["early_stopping"]["mode"] == "max"  # auto from val_accuracy


def test_label_smoothing_and_augment_defaults_and_round_trip():
    cfg = validate_config(_image([{"kind": "flatten"}]))
    assert cfg["training"]["label_smoothing"] == 0.0 and cfg["training"]["augment"] is None
    cfg = ModelConfig.from_config(_image([{"kind": "flatten"}], training={
        "label_smoothing": 0.1, "augment": {"translate": 2}}))
    assert cfg.training["label_smoothing"] == pytest.approx(0.1)
    assert cfg.training["augment"] == {"flip_horizontal": False, "translate": 2, "cutout": 0}
    assert ModelConfig.from_config(cfg.get_config()) == cfg
    assert validate_config(_image([{"kind": "flatten"}], training={"augment": False}))[
        "training"]["augment"] is None


def test_overrides_set_dotted_paths_without_touching_the_source():
    raw = copy.deepcopy(FRAUD)
    out = apply_overrides(raw, {"training.epochs": 2, "dataset.limit": 300})
    assert out["training"]["epochs"] == 2 and out["dataset"]["limit"] == 300
    assert raw == FRAUD
    assert apply_overrides({"dataset": "digits"}, {"dataset.limit": 50})["dataset"] == {
        "name": "digits", "limit": 50}


def _fraud(**changes):
    raw = copy.deepcopy(FRAUD)
    for dotted, value in changes.items():
        node, parts = raw, dotted.split("__")
        for p in parts[:-1]:
            node = node[int(p)] if isinstance(node, list) else node[p]
        last = parts[-1]
        if value is _DELETE:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return raw


_DELETE = object()


def _image(hidden, **extra):
    return {"name": "img", "task": "multiclass_classification", "dataset": {"name": "digits"},
            "input": "image", "hidden": hidden, **extra}


INVALID = [
    # (raw config, expected field path, fragment of the message)
    (_fraud(task="regression"), "task",
     "expected one of binary_classification, multiclass_classification. Received: "
     "task='regression'"),
    (_fraud(task="multiclass_classification"), "task",
     "data set creditcard has 2 classes, so the task is binary_classification"),
    (_fraud(name="Fraud Model"), "name", "Received: name='Fraud Model'"),
    (_fraud(name=_DELETE), "name", "missing required field"),
    (_fraud(colour="red"), "colour", "unknown field 'colour'; allowed fields: name,"),
    (_fraud(dataset={"name": "cifar10"}), "dataset.name",
     "expected one of creditcard, fashion_mnist, mnist, digits. Received: name='cifar10'"),
    (_fraud(dataset={"name": "creditcard", "limit": 0}), "dataset.limit",
     "expected an integer >= 10. Received: limit=0"),
    (_image([{"kind": "flatten"}], dataset={"name": "digits", "synthetic": True}),
     "dataset.synthetic", "synthetic data exists only for creditcard"),
    (_fraud(input="image"), "input", "data set creditcard is tabular. Received: input='image'"),
    (_fraud(hidden={"kind": "dense"}), "hidden", "expected a list of layers"),
    (_fraud(hidden__2__activation="swish"), "hidden[2].activation",
     "expected one of relu, tanh, sigmoid, gelu, elu, selu, leaky_relu, linear. "
     "Received: activation='swish'"),
    (_fraud(hidden__0__units=-3), "hidden[0].units",
     "expected an integer >= 1. Received: units=-3"),
    (_fraud(hidden__0__units=2.5), "hidden[0].units", "Received: units=2.5"),
    (_fraud(hidden__0__units=_DELETE), "hidden[0].units", "missing; a dense layer needs 'units'"),
    (_fraud(hidden__1__rate=1.0), "hidden[1].rate",
     "expected a number >= 0.0 and < 1.0. Received: rate=1.0"),
    (_fraud(hidden__0__l2=-0.1), "hidden[0].l2", "expected a number >= 0.0. Received: l2=-0.1"),
    (_fraud(hidden__0__use_bias="yes"), "hidden[0].use_bias",
     "expected true or false. Received: use_bias='yes'"),
    (_fraud(hidden__0__kind="dense3d"), "hidden[0].kind",
     "expected one of dense, dropout, batch_norm, layer_norm, conv2d,"),
    (_fraud(hidden__0={"units": 3}), "hidden[0].kind", "missing; allowed kinds: dense,"),
    (_fraud(hidden__0={"kind": "dense", "units": 3, "filters": 2}), "hidden[0].filters",
     "unknown field 'filters'; allowed fields: kind, name, units, activation, l1, l2, use_bias"),
    (_fraud(hidden__0={"kind": "conv2d", "filters": 8}), "hidden[0].kind",
     "conv2d needs an image feature map (H, W, C) but hidden[0] (conv2d_1) receives tabular "
     "input of shape [30]"),
    (_fraud(hidden__0={"kind": "flatten"}), "hidden[0].kind", "flatten needs an image"),
    (_fraud(hidden__0__name="output"), "hidden[0].name", "'output' is reserved"),
    (_fraud(hidden__0__name="2fast"), "hidden[0].name", "Received: name='2fast'"),
    (_fraud(hidden__2__name="dense_1"), "hidden[2].name",
     "duplicate layer name 'dense_1' (also hidden[0])"),
    (_image([{"kind": "flatten"}, {"kind": "max_pool"}]), "hidden[1].kind",
     "max_pool needs an image feature map (H, W, C) but hidden[1] (max_pool_1) receives a "
     "flat input (after flatten/pool) of shape [64]"),
    (_image([{"kind": "dense", "units": 4}]), "hidden[0].kind",
     "dense needs a flat input but hidden[0] (dense_1) receives a feature map of shape "
     "[8, 8, 1]"),
    (_image([{"kind": "conv2d", "filters": 4}]), "hidden",
     "the last hidden layer gives a 3-D feature map [8, 8, 4]; end with flatten"),
    (_image([{"kind": "conv2d", "filters": 4, "kernel": 9, "padding": "valid"},
             {"kind": "flatten"}]), "hidden[0].kernel", "kernel [9, 9] does not fit the 8x8"),
    (_image([{"kind": "conv2d", "filters": 4, "padding": "full"}, {"kind": "flatten"}]),
     "hidden[0].padding", "expected one of same, valid. Received: padding='full'"),
    (_image([{"kind": "conv2d", "filters": 4, "kernel": [3, 0]}, {"kind": "flatten"}]),
     "hidden[0].kernel", "expected an integer >= 1 or a list of two. Received: kernel=[3, 0]"),
    (_image([{"kind": "max_pool", "pool": 16}, {"kind": "flatten"}]), "hidden[0].pool",
     "pool [16, 16] does not fit the 8x8 input of hidden[0] (max_pool_1)"),
    (_image([{"kind": "flatten"}], preprocessing={"normalize": True}), "preprocessing.normalize",
     "unknown field 'normalize'; allowed fields: rescale"),
    (_image([{"kind": "flatten"}], preprocessing={"rescale": 0}), "preprocessing.rescale",
     "expected a number > 0.0. Received: rescale=0"),
    (_image([{"kind": "flatten"}], threshold={"objective": "best_f1"}), "threshold",
     "only binary_classification has a decision threshold"),
    (_image([{"kind": "flatten"}], output={"activation": "sigmoid"}), "output.activation",
     "a multiclass_classification model ends in softmax. Received: activation='sigmoid'"),
    (_fraud(training__optimizer="lbfgs"), "training.optimizer",
     "expected one of adam, sgd, rmsprop, adamw. Received: optimizer='lbfgs'"),
    (_fraud(training__learning_rate=0), "training.learning_rate",
     "expected a number > 0.0 and <= 10.0. Received: learning_rate=0"),
    (_fraud(training__lr_schedule="step"), "training.lr_schedule",
     "expected one of constant, cosine. Received: lr_schedule='step'"),
    (_fraud(training__epochs=0), "training.epochs", "expected an integer >= 1. Received: epochs=0"),
    (_fraud(training__batch_size="big"), "training.batch_size", "Received: batch_size='big'"),
    (_fraud(training__early_stopping={"monitor": "val_f1"}), "training.early_stopping.monitor",
     "expected one of loss, accuracy, pr_auc, roc_auc, val_loss, val_accuracy, val_pr_auc, "
     "val_roc_auc. Received: monitor='val_f1'"),
    (_fraud(training__early_stopping={"patience": -1}), "training.early_stopping.patience",
     "Received: patience=-1"),
    (_fraud(training__early_stopping={"mode": "up"}), "training.early_stopping.mode",
     "expected one of min, max, auto. Received: mode='up'"),
    (_fraud(training__class_weight="auto"), "training.class_weight",
     "expected balanced, none or a mapping {class index: weight}. Received: "
     "class_weight='auto'"),
    (_fraud(training__class_weight={0: 1.0, 1: -2}), "training.class_weight.1",
     "expected a number > 0.0. Received: 1=-2"),
    (_fraud(training__class_weight={"fraud": 3}), "training.class_weight.fraud",
     "keys are class indices 0..1. Received: 'fraud'"),
    (_fraud(training__class_weight={0: 1, 2: 3}), "training.class_weight.2",
     "keys are class indices 0..1. Received: 2"),
    (_fraud(training__validation_fraction=0.6), "training.validation_fraction",
     "expected a number > 0.0 and <= 0.5. Received: validation_fraction=0.6"),
    (_fraud(training__validation_fraction=0.45, training__test_fraction=0.4),
     "training.test_fraction", "must leave at least 20% for training"),
    (_fraud(training__weight_decay=0.01), "training.weight_decay",
     "applies to adamw or sgd. Received: optimizer='adam'"),
    (_fraud(training__label_smoothing=1.0), "training.label_smoothing",
     "expected a number >= 0.0 and < 1.0. Received: label_smoothing=1.0"),
    (_fraud(training__augment={"translate": 2}), "training.augment",
     "only image inputs are augmented. Received: input='tabular'"),
    (_image([{"kind": "flatten"}], training={"augment": {"rotate": 10}}),
     "training.augment.rotate", "unknown field 'rotate'; allowed fields: flip_horizontal, "
     "translate, cutout"),
    (_image([{"kind": "flatten"}], training={"augment": {"flip_horizontal": "yes"}}),
     "training.augment.flip_horizontal", "expected true or false. Received: "
     "flip_horizontal='yes'"),
    (_image([{"kind": "flatten"}], training={"augment": {"translate": 4}}),
     "training.augment.translate", "below half the 8-pixel side (< 4). Received: translate=4"),
    (_image([{"kind": "flatten"}], training={"augment": {"cutout": -1}}),
     "training.augment.cutout", "expected an integer >= 0. Received: cutout=-1"),
    (_image([{"kind": "flatten"}], training={"augment": {"cutout": 9}}),
     "training.augment.cutout", "<= the 8-pixel image side. Received: cutout=9"),
    (_fraud(threshold={"objective": "max_recall"}), "threshold.objective",
     "expected one of best_f1, recall_at_precision, precision_at_recall. "
     "Received: objective='max_recall'"),
    (_fraud(threshold={"objective": "recall_at_precision"}), "threshold.min_precision",
     "missing; objective recall_at_precision needs min_precision"),
    (_fraud(threshold={"objective": "recall_at_precision", "min_precision": 1.5}),
     "threshold.min_precision", "expected a number > 0.0 and <= 1.0. Received: "
     "min_precision=1.5"),
    (_fraud(threshold={"objective": "best_f1", "min_recall": 0.5}), "threshold.min_recall",
     "does not apply to objective best_f1"),
]


@pytest.mark.parametrize("raw, path, fragment", INVALID,
                         ids=[f"{i}-{case[1]}" for i, case in enumerate(INVALID)])
def test_invalid_config_names_field_value_and_allowed(raw, path, fragment):
    with pytest.raises(ConfigError) as info:
        validate_config(raw)
    assert info.value.path == path
    assert str(info.value).startswith(f"{path}: ")
    assert fragment in str(info.value)


def test_missing_config_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found. Received: .*nope"):
        load_config(tmp_path / "nope")
    bad = tmp_path / "model.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(tmp_path)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping. Received: list"):
        load_config(bad)


def _cli(*args, cwd=ROOT):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", "training", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_exits_2_on_invalid_config_before_training(tmp_path):
    raw = _fraud(hidden__2__activation="swish")
    (tmp_path / "fraud").mkdir()
    (tmp_path / "fraud" / "model.yaml").write_text(yaml.safe_dump(raw))
    proc = _cli("train", str(tmp_path / "fraud"), "--models-root", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr
    assert "hidden[2].activation" in proc.stderr
    assert "Received: activation='swish'" in proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "fraud" / "1").exists()


def test_cli_exits_2_on_bad_override_and_shows_help():
    proc = _cli("train", "models/fraud", "--epochs", "0")
    assert proc.returncode == 2 and "Received: epochs=0" in proc.stderr
    proc = _cli("train", "models/fraud", "--set", "training.optimizer=lbfgs")
    assert proc.returncode == 2 and "training.optimizer" in proc.stderr
    proc = _cli("train", "models/fraud", "--rows", "500")
    assert proc.returncode == 2 and "only applies with --synthetic" in proc.stderr
    proc = _cli("train", "models/fashion", "--synthetic")
    assert proc.returncode == 2
    assert "synthetic data exists only for creditcard" in proc.stderr
    proc = _cli("--help")
    assert proc.returncode == 0
    for command in ("data", "train", "sweep", "evaluate"):
        assert command in proc.stdout


def test_class_weight_mapping_is_stored_json_safe_and_used_as_given():
    import numpy as np

    from training.train import class_weights

    cfg = ModelConfig.from_config(_fraud(training__class_weight={0: 1, "1": 7.5}))
    assert cfg["training"]["class_weight"] == {"0": 1.0, "1": 7.5}  # JSON keys are strings
    assert ModelConfig.from_config(cfg.get_config()) == cfg
    assert class_weights(cfg, np.array([0, 0, 1]), 2) == {0: 1.0, 1: 7.5}
    assert class_weights(ModelConfig.from_config(_fraud(training__class_weight="none")),
                         np.array([0, 1]), 2) is None
