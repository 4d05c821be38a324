"""The naive server: Flask + ``model.predict`` per request, the way most tutorials serve a
Keras model. Each model is loaded lazily in each worker (after fork) from the latest
version in ``LAYERSCOPE_BENCH_REPOSITORY/<name>/``; ``POST /models/<name>/predict`` takes
``{"instances": [...]}`` and returns the raw probabilities."""

import os
import threading
from pathlib import Path

import numpy as np
from flask import Flask, jsonify, request

app = Flask(__name__)
_lock = threading.Lock()
_models: dict = {}


def _get_model(name: str):
    with _lock:
        if name not in _models:
            import keras

            folder = Path(os.environ["LAYERSCOPE_BENCH_REPOSITORY"]) / name
            versions = [p for p in folder.iterdir() if p.name.isdigit()]
            latest = max(versions, key=lambda p: int(p.name))
            _models[name] = keras.saving.load_model(
                latest / "model.keras", safe_mode=True, compile=False
            )
    return _models[name]


@app.post("/models/<name>/predict")
def predict(name: str):
    body = request.get_json(force=True)
    x = np.asarray(body["instances"], dtype="float32")
    model = _get_model(name)
    if len(model.input_shape) == 4 and x.ndim == 3:
        x = x[..., None]
    probs = model.predict(x, verbose=0)
    return jsonify(predictions=probs.tolist())


@app.get("/healthz")
def healthz():
    return jsonify(status="alive")
