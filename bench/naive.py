"""The naive server: Flask + `model.predict` per request, the way most tutorials serve a
Keras model. Loaded lazily in each worker (after fork) from LAYERSCOPE_BENCH_MODEL, a
version folder holding model.keras."""

import os
import threading

import numpy as np
from flask import Flask, jsonify, request

app = Flask(__name__)
_lock = threading.Lock()
_model = None


def _get_model():
    global _model
    with _lock:
        if _model is None:
            import keras

            path = os.path.join(os.environ["LAYERSCOPE_BENCH_MODEL"], "model.keras")
            _model = keras.saving.load_model(path, safe_mode=True, compile=False)
    return _model


@app.post("/predict")
def predict():
    body = request.get_json(force=True)
    x = np.asarray(body["instances"], dtype="float32")
    model = _get_model()
    if len(model.input_shape) == 4 and x.ndim == 3:
        x = x[..., None]
    probs = model.predict(x, verbose=0)
    return jsonify(predictions=probs.tolist())


@app.get("/healthz")
def healthz():
    _get_model()
    return jsonify(status="alive")
