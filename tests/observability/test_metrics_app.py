"""Metrics and request-id behaviour of the real app in-process (Flask test client, real
tiny models, the process-local registry). Counters are global to the process, so every
check is a difference between before and after."""

from __future__ import annotations

import io
import json
import logging
import re

import numpy as np
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from service import logs, metrics
from tests.observability.stack import (
    MODEL,
    publish_corrupt,
    publish_tabular,
    samples,
    wait_for,
)

PREDICT = "/models/<name>/predict"


def value(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from service import create_app

    repo = tmp_path_factory.mktemp("repo")
    v1 = publish_tabular(repo, seed=0)
    publish_corrupt(v1)
    publish_tabular(repo, seed=3, name="tri", classes=["low", "mid", "high"])
    failures_before = value("layerscope_model_load_failures_total", model=MODEL, reason="checksum")
    app = create_app(
        {
            "model_repository": str(repo),
            "load_in_background": False,
            "poll_interval": 0,
            "activation_sample_every": 1,
            "activation_sample_interval": 0,
        }
    )
    app.config["failures_before"] = failures_before
    app.config["repo"] = repo
    return app


@pytest.fixture()
def client(app):
    return app.test_client()


def test_exposition_has_every_family_with_conventional_names(client):
    response = client.get("/metrics")
    assert response.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    expected = {
        "layerscope_requests": "counter",
        "layerscope_request_duration_seconds": "histogram",
        "layerscope_requests_in_flight": "gauge",
        "layerscope_model_compute_duration_seconds": "histogram",
        "layerscope_batch_size": "histogram",
        "layerscope_predictions": "counter",
        "layerscope_fraud_decisions": "counter",
        "layerscope_fraud_score": "histogram",
        "layerscope_model_ready": "gauge",
        "layerscope_model_info": "gauge",
        "layerscope_model_load_timestamp_seconds": "gauge",
        "layerscope_model_load_duration_seconds": "histogram",
        "layerscope_model_load_failures": "counter",
        "layerscope_model_reloads": "counter",
        "layerscope_layer_activation_mean": "summary",
        "layerscope_layer_inactive_fraction": "summary",
        "layerscope_layer_reference_activation_mean": "gauge",
        "layerscope_layer_reference_inactive_fraction": "gauge",
    }
    for name, kind in expected.items():
        assert name in families, name
        assert families[name].type == kind, name
    buckets = metrics.REQUEST_DURATION._upper_bounds
    assert buckets[0] == 0.0001 and buckets[-2] == 5.0  # 0.1 ms .. 5 s, then +Inf
    assert metrics.COMPUTE_DURATION._upper_bounds == buckets


def test_every_gauge_declares_its_multiprocess_mode():
    gauges = [m for m in vars(metrics).values() if type(m).__name__ == "Gauge"]
    assert len(gauges) == 10
    for gauge in gauges:
        assert gauge._multiprocess_mode in {"livesum", "livemin", "livemax"}


def test_predict_requests_are_counted_with_bounded_labels(client):
    labels = dict(model=MODEL, version="1", endpoint=PREDICT, method="POST", code="200")
    before = value("layerscope_requests_total", **labels)
    dur_before = value(
        "layerscope_request_duration_seconds_count", model=MODEL, endpoint=PREDICT, method="POST"
    )
    for _ in range(3):
        response = client.post(f"/models/{MODEL}/predict", json={"instances": samples(2).tolist()})
        assert response.status_code == 200
    assert value("layerscope_requests_total", **labels) - before == 3
    after = value(
        "layerscope_request_duration_seconds_count", model=MODEL, endpoint=PREDICT, method="POST"
    )
    assert after - dur_before == 3
    assert value("layerscope_requests_in_flight") == 0


def test_unknown_model_unmatched_path_and_metrics_scrapes(client):
    unknown = dict(model="unknown", version="", endpoint=PREDICT, method="POST", code="404")
    before = value("layerscope_requests_total", **unknown)
    for name in ("nope", "zz" * 30, "Fraud"):
        assert client.post(f"/models/{name}/predict", json={"instances": []}).status_code == 404
    assert value("layerscope_requests_total", **unknown) - before == 3
    unmatched = dict(model="unknown", version="", endpoint="unmatched", method="GET", code="404")
    before = value("layerscope_requests_total", **unmatched)
    assert client.get("/definitely/not/a/route").status_code == 404
    assert value("layerscope_requests_total", **unmatched) - before == 1
    # unknown version of a known model: the model stays, the version label is empty
    labels = dict(
        model=MODEL,
        version="",
        endpoint="/models/<name>/versions/<int:version>/predict",
        method="POST",
        code="404",
    )
    before = value("layerscope_requests_total", **labels)
    response = client.post(
        f"/models/{MODEL}/versions/77/predict", json={"instances": samples(1).tolist()}
    )
    assert response.status_code == 404
    assert value("layerscope_requests_total", **labels) - before == 1
    scrapes = [
        s
        for f in text_string_to_metric_families(client.get("/metrics").text)
        for s in f.samples
        if s.labels.get("endpoint") == "/metrics"
    ]
    assert scrapes == []


def test_classes_decisions_and_scores_match_the_responses(client):
    x = samples(12, seed=5)
    before = {
        c: value("layerscope_predictions_total", model=MODEL, version="1", **{"class": c})
        for c in ("legit", "fraud")
    }
    pos_before = value("layerscope_fraud_decisions_total", model=MODEL, decision="positive")
    score_before = value("layerscope_fraud_score_count", model=MODEL)
    high_before = value("layerscope_fraud_score_bucket", model=MODEL, le="0.5")
    body = client.post(f"/models/{MODEL}/predict", json={"instances": x.tolist()}).get_json()
    decisions = [p["decision"] for p in body["predictions"]]
    probs = [p["fraud_probability"] for p in body["predictions"]]
    for c in ("legit", "fraud"):
        got = value("layerscope_predictions_total", model=MODEL, version="1", **{"class": c})
        assert got - before[c] == decisions.count(c)
    pos = value("layerscope_fraud_decisions_total", model=MODEL, decision="positive")
    assert pos - pos_before == decisions.count("fraud")
    assert value("layerscope_fraud_score_count", model=MODEL) - score_before == 12
    below = value("layerscope_fraud_score_bucket", model=MODEL, le="0.5") - high_before
    assert below == sum(p <= 0.5 for p in probs)


def test_multiclass_predictions_by_class_match_the_labels(client):
    classes = ["low", "mid", "high"]
    before = {
        c: value("layerscope_predictions_total", model="tri", version="1", **{"class": c})
        for c in classes
    }
    fraud_before = value("layerscope_fraud_score_count", model="tri")
    x = samples(30, seed=11)
    x[:, 1:29] *= 4  # spread the inputs so more than one class is predicted
    body = client.post("/models/tri/predict", json={"instances": x.tolist()}).get_json()
    labels = [p["label"] for p in body["predictions"]]
    assert len(set(labels)) >= 2, labels
    for c in classes:
        got = value("layerscope_predictions_total", model="tri", version="1", **{"class": c})
        assert got - before[c] == labels.count(c), c
    assert value("layerscope_fraud_score_count", model="tri") == fraud_before == 0


def test_activation_summary_equals_numpy(app, client):
    runtime = app.extensions["layerscope"].repository.get(MODEL)
    x = samples(3, seed=9)
    acts = runtime.activations(x, runtime.hidden_layer_names)
    before = {
        layer: (
            value("layerscope_layer_activation_mean_sum", model=MODEL, version="1", layer=layer),
            value("layerscope_layer_activation_mean_count", model=MODEL, version="1", layer=layer),
            value("layerscope_layer_inactive_fraction_sum", model=MODEL, version="1", layer=layer),
        )
        for layer in runtime.hidden_layer_names
    }
    response = client.post(f"/models/{MODEL}/predict", json={"instances": x.tolist()})
    assert response.status_code == 200
    assert runtime.hidden_layer_names == ["dense_1", "dense_2"]
    for layer, values in acts.items():
        s0, c0, f0 = before[layer]
        s = value("layerscope_layer_activation_mean_sum", model=MODEL, version="1", layer=layer)
        c = value("layerscope_layer_activation_mean_count", model=MODEL, version="1", layer=layer)
        f = value("layerscope_layer_inactive_fraction_sum", model=MODEL, version="1", layer=layer)
        assert c - c0 == 3
        assert s - s0 == pytest.approx(float(values.mean(axis=1).sum()), abs=1e-4)
        assert f - f0 == pytest.approx(float((values <= 0).mean(axis=1).sum()), abs=1e-6)


def test_sampling_at_most_once_per_interval_per_version(app, client):
    """LAYERSCOPE_ACTIVATION_SAMPLE_INTERVAL caps the sampling under load: with a minute's
    interval only the first of several sampled calls feeds the summaries."""
    from service import metrics

    runtime = app.extensions["layerscope"].repository.get(MODEL)
    layer = runtime.hidden_layer_names[0]

    def sampled_rows():
        labels = {"model": MODEL, "version": "1", "layer": layer}
        return value("layerscope_layer_activation_mean_count", **labels)

    body = {"instances": samples(2, seed=4).tolist()}
    try:
        metrics.configure(sample_interval=60)  # nothing sampled it with an interval yet
        before = sampled_rows()
        for _ in range(5):
            assert client.post(f"/models/{MODEL}/predict", json=body).status_code == 200
        assert sampled_rows() - before == 2  # one call of 2 rows
    finally:
        metrics.configure(sample_interval=0)
    before = sampled_rows()
    for _ in range(3):
        client.post(f"/models/{MODEL}/predict", json=body)
    assert sampled_rows() - before == 6  # no interval: every call (sample_every=1)


def test_reference_summary_and_lifecycle(app):
    repo = app.config["repo"]
    runtime = app.extensions["layerscope"].repository.get(MODEL)
    with np.load(repo / MODEL / "1" / "reference.npz") as data:
        ref = runtime.activations(data["x"], runtime.hidden_layer_names)
    for layer, values in ref.items():
        flat = values.reshape(len(values), -1)
        labels = {"model": MODEL, "version": "1", "layer": layer}
        wait_for(  # computed off the loading thread
            lambda labels=labels: (
                REGISTRY.get_sample_value("layerscope_layer_reference_inactive_fraction", labels)
                is not None
            ),
            30,
            what="reference summary",
        )
        got = value(
            "layerscope_layer_reference_activation_mean", model=MODEL, version="1", layer=layer
        )
        assert got == pytest.approx(float(flat.mean(axis=1).mean()), abs=1e-5)
        got = value(
            "layerscope_layer_reference_inactive_fraction", model=MODEL, version="1", layer=layer
        )
        assert got == pytest.approx(float((flat <= 0).mean()), abs=1e-6)
    assert value("layerscope_model_ready", model=MODEL, version="1") == 1
    assert value("layerscope_model_ready", model=MODEL, version="2") == 0
    assert (
        value("layerscope_model_info", model=MODEL, version="1", task="binary_classification") == 1
    )
    failures = value("layerscope_model_load_failures_total", model=MODEL, reason="checksum")
    assert failures - app.config["failures_before"] == 1


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("abc-123", True),
        ("trace:01.ab_CD", True),
        ("x" * 128, True),
        (None, False),
        ("", False),
        ("x" * 129, False),
        ("has space", False),
        ("semi;colon", False),
        ("ünïcode", False),
    ],
)
def test_request_id_kept_only_when_well_formed(client, sent, kept):
    headers = {} if sent is None else {"X-Request-ID": sent}
    response = client.get("/healthz", headers=headers)
    rid = response.headers["X-Request-ID"]
    if kept:
        assert rid == sent
    else:
        assert re.fullmatch(r"[0-9a-f]{32}", rid)


def test_access_record_is_json_without_input_values(client, caplog):
    row = samples(1)[0].tolist()
    row[-1] = 43210.9876
    with caplog.at_level(logging.INFO, logger=logs.ACCESS_LOGGER):
        response = client.post(
            f"/models/{MODEL}/predict?token=hunter2",
            json={"instances": [row]},
            headers={"X-Request-ID": "r-1"},
        )
    assert response.status_code == 200
    records = [r for r in caplog.records if r.name == logs.ACCESS_LOGGER]
    assert len(records) == 1
    line = logs.JsonFormatter().format(records[0])
    entry = json.loads(line)
    assert entry["request_id"] == "r-1" and entry["status"] == 200
    assert entry["model"] == MODEL and entry["version"] == 1
    assert entry["endpoint"] == PREDICT and entry["level"] == "info"
    assert "43210.98" not in line and "hunter2" not in line and "token" not in line


def test_access_line_of_the_production_set_up_equals_the_logging_paths(client, caplog):
    """Under Gunicorn's logging set-up the access line skips ``logging`` (a queued dict,
    logs.direct_access_handler); its text is the line the logging path writes."""
    row = samples(1)[0].tolist()
    send = lambda: client.post(  # noqa: E731
        f"/models/{MODEL}/predict", json={"instances": [row]}, headers={"X-Request-ID": "same"}
    )
    with caplog.at_level(logging.INFO, logger=logs.ACCESS_LOGGER):
        assert send().status_code == 200  # caplog's handler: the logging path
    assert logs.direct_access_handler() is None
    via_logging = [r for r in caplog.records if r.name == logs.ACCESS_LOGGER]
    assert len(via_logging) == 1
    expected = json.loads(logs.JsonFormatter().format(via_logging[0]))

    stream = io.StringIO()
    handler = logs.BackgroundStreamHandler(stream, interval=3600.0)
    handler.setFormatter(logs.JsonFormatter())
    parent = logging.getLogger("layerscope")
    saved = parent.handlers[:], parent.propagate, parent.level
    parent.handlers[:], parent.propagate = [handler], False
    parent.setLevel(logging.INFO)
    try:
        assert logs.direct_access_handler() is handler
        assert send().status_code == 200
        handler.flush()
    finally:
        parent.handlers[:], parent.propagate = saved[0], saved[1]
        parent.setLevel(saved[2])
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    direct = [e for e in lines if e["logger"] == logs.ACCESS_LOGGER]
    assert len(direct) == 1
    assert list(direct[0]) == list(expected)  # the same keys in the same order
    for key in ("ts", "duration_ms"):
        direct[0].pop(key), expected.pop(key)
    assert direct[0] == expected


def test_failure_reason_is_bounded():
    assert metrics.failure_reason("checksum mismatch for model.keras: ...") == "checksum"
    assert metrics.failure_reason("unreadable metadata.json: ...") == "metadata"
    assert metrics.failure_reason("keras could not load model.keras: boom") == "load"
    assert metrics.failure_reason(None) == "load"
