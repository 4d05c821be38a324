"""The HTTP ceiling: a minimal Flask endpoint that parses the same JSON body and returns a
constant. Served under the same Gunicorn settings as Layerscope, it bounds what any Flask
model server on this machine can reach."""

from flask import Flask, jsonify, request

app = Flask(__name__)
_CONSTANT = {"predictions": [{"label": "constant", "score": 1.0}]}


@app.post("/predict")
def predict():
    body = request.get_json(force=True)
    if not isinstance(body, dict) or "instances" not in body:
        return jsonify(error="expected {'instances': [...]}"), 400
    return jsonify(_CONSTANT)


@app.get("/healthz")
def healthz():
    return jsonify(status="alive")
