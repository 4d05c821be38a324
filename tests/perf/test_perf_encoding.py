"""The batch-wide fast paths give exactly what the per-row code gave."""

from __future__ import annotations

import numpy as np
import orjson
from prometheus_client import CollectorRegistry, Histogram

from service.api import format_prediction, format_predictions
from service.metrics import SCORE_BUCKETS, observe_many
from service.runtime import KerasRuntime


def test_format_predictions_matches_per_row(perf_repo, model_names, splits):
    for name in model_names:
        rt = KerasRuntime(perf_repo / name / "1")
        rt.load()
        probs = rt.predict(splits[name][0])
        fast = format_predictions(rt, probs)
        slow = [format_prediction(rt, row) for row in probs]
        assert orjson.dumps(fast) == orjson.dumps(slow)  # same values, same key order
        assert format_predictions(rt, probs[:0]) == []
    # ties and the exact threshold
    rt.threshold = float(probs[0, 1]) if rt.binary else rt.threshold
    assert orjson.dumps(format_predictions(rt, probs[:3])) == orjson.dumps(
        [format_prediction(rt, row) for row in probs[:3]]
    )


def _samples(hist: Histogram) -> dict:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for metric in hist.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    }


def test_observe_many_equals_observe_each():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.random(500), [0.0, 0.01, 0.5, 1.0, 0.99, 1.5]])
    one = Histogram("one", "x", buckets=SCORE_BUCKETS, registry=CollectorRegistry())
    many = Histogram("many", "x", buckets=SCORE_BUCKETS, registry=CollectorRegistry())
    for v in values.tolist():
        one.observe(v)
    observe_many(many, values)
    a = {(k[0].replace("one", "x", 1), k[1]): v for k, v in _samples(one).items()}
    b = {(k[0].replace("many", "x", 1), k[1]): v for k, v in _samples(many).items()}
    assert a.keys() == b.keys()
    for key in a:
        assert abs(a[key] - b[key]) < 1e-9, key
