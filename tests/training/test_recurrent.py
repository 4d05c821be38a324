"""Recurrent hidden layers in model.yaml (lstm, gru, simple_rnn): validated like every
other kind, an image read row by row, trained and published by the pipeline, and served
with each layer's hidden state over time."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from service import create_app
from training import train as train_mod
from training.builder import build_model
from training.config import ConfigError, load_config, validate_config

ROOT = Path(__file__).resolve().parents[2]


def _rnn(hidden, dataset="digits", input_kind="image"):
    return {
        "name": "seq",
        "task": "multiclass_classification",
        "dataset": dataset,
        "input": input_kind,
        "hidden": hidden,
        "training": {"epochs": 2, "batch_size": 64, "seed": 0, "learning_rate": 0.01},
    }


def test_the_example_config_is_valid():
    cfg = load_config(ROOT / "examples" / "mnist_rnn")
    kinds = [h["kind"] for h in cfg.get_config()["hidden"]]
    assert kinds[:2] == ["lstm", "gru"]
    assert cfg.get_config()["hidden"][0]["name"] == "lstm_1"


@pytest.mark.parametrize(
    "hidden, path, fragment",
    [
        ([{"kind": "lstm"}], "hidden[0].units", "missing; a lstm layer needs 'units'"),
        ([{"kind": "gru", "units": 0}], "hidden[0].units", "Received: units=0"),
        ([{"kind": "gru", "units": 4, "dropout": 1.5}], "hidden[0].dropout", "dropout=1.5"),
        ([{"kind": "simple_rnn", "units": 4, "return_sequences": "yes"}],
         "hidden[0].return_sequences", "return_sequences='yes'"),
        ([{"kind": "lstm", "units": 4, "return_sequences": True}], "hidden",
         "the last hidden layer gives a 2-D feature map"),
        ([{"kind": "flatten"}, {"kind": "lstm", "units": 4}], "hidden[1].kind",
         "lstm needs a sequence (time, features) or an image"),
        ([{"kind": "lstm", "units": 4, "peepholes": True}], "hidden[0].peepholes", "unknown"),
    ],
)  # fmt: skip
def test_invalid_recurrent_layers_name_the_field(hidden, path, fragment):
    with pytest.raises(ConfigError) as info:
        validate_config(_rnn(hidden))
    assert info.value.path == path
    assert fragment in str(info.value)


def test_tabular_input_cannot_feed_a_recurrent_layer():
    raw = _rnn([{"kind": "gru", "units": 4}], dataset="creditcard", input_kind="tabular")
    raw["task"] = "binary_classification"
    with pytest.raises(ConfigError, match="gru needs a sequence"):
        validate_config(raw)


def test_builder_reads_image_rows_as_time_steps():
    cfg = _rnn(
        [{"kind": "lstm", "units": 5, "return_sequences": True, "recurrent_dropout": 0.1},
         {"kind": "simple_rnn", "units": 3}]
    )  # fmt: skip
    model = build_model(cfg, input_shape=(8, 8, 1), num_classes=10)
    names = [layer.name for layer in model.layers]
    assert names == ["input", "rescaling", "to_sequence", "lstm_1", "simple_rnn_1", "output"]
    assert tuple(model.get_layer("lstm_1").output.shape) == (None, 8, 5)
    assert model.get_layer("lstm_1").recurrent_dropout == pytest.approx(0.1)
    assert tuple(model.get_layer("simple_rnn_1").output.shape) == (None, 3)


def test_a_trained_recurrent_version_serves_its_hidden_states(tmp_path):
    config = tmp_path / "model.yaml"
    config.write_text(
        yaml.safe_dump(
            _rnn([{"kind": "lstm", "units": 6, "return_sequences": True},
                  {"kind": "gru", "units": 4}])
        )
    )  # fmt: skip
    result = train_mod.run_training(config, overrides={"dataset.limit": 400})
    folder = train_mod.publish(result, tmp_path / "models" / "seq")
    client = create_app(
        {"model_repository": str(tmp_path / "models"), "load_in_background": False,
         "poll_interval": 0, "probes_on_load": False}
    ).test_client()  # fmt: skip
    layers = client.get("/models/seq/layers").json
    names = [row["name"] for row in layers["layers"]]
    assert {"lstm_1", "gru_1", "gru_1:sequence"} <= set(names)
    with np.load(folder / "reference.npz") as ref:
        x = ref["x"][:2]
    body = {"instances": x.tolist(), "layers": ["lstm_1", "gru_1", "gru_1:sequence"],
            "include": ["values"]}  # fmt: skip
    got = client.post("/models/seq/activations", json=body).json["instances"][0]["layers"]
    assert got["lstm_1"]["shape"] == [8, 6] and got["gru_1:sequence"]["shape"] == [8, 4]
    sequence = np.asarray(got["gru_1:sequence"]["values"])
    np.testing.assert_allclose(sequence[-1], got["gru_1"]["values"], atol=1e-5)
    png = client.post("/models/seq/layers/lstm_1/picture.png", json={"instances": x[:1].tolist()})
    assert png.status_code == 200
    width, height = Image.open(io.BytesIO(png.data)).size
    assert height > width / 8  # a time x unit map, not a one-row strip
