"""Threshold choice, binary / multiclass metrics and the gradient-boosting baseline,
checked against small hand-computed cases."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from training import evaluate
from training.evaluate import (
    ThresholdUnreachable,
    binary_metrics,
    choose_threshold,
    gradient_boosting_baseline,
    multiclass_metrics,
)

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("LAYERSCOPE_DATA_DIR") or ROOT.parent / "shared" / "datasets")

# Scores in descending order with their labels.  Predicting positive for p >= s:
#   s    tp fp  precision recall  F1
#   0.9  1  0   1         1/3     0.5
#   0.8  2  0   1         2/3     0.8
#   0.7  2  1   2/3       2/3     0.667
#   0.6  3  1   3/4       1       0.857   <- best F1
#   0.5  3  2   3/5       1       0.75
#   0.4  3  3   1/2       1       0.667
#   0.3  3  4   3/7       1       0.6
P = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]
Y = [1, 1, 0, 1, 0, 0, 0]


def test_best_f1_threshold_is_known():
    # midway between the lowest score kept (0.6) and the next lower one (0.5)
    assert choose_threshold(Y, P, {"objective": "best_f1"}) == pytest.approx(0.55)


@pytest.mark.parametrize("objective, expected", [
    ({"objective": "recall_at_precision", "min_precision": 1.0}, 0.75),   # P=1 up to 0.8
    ({"objective": "recall_at_precision", "min_precision": 0.7}, 0.55),   # P=.75, R=1
    ({"objective": "recall_at_precision", "min_precision": 0.6}, 0.55),   # R=1 tie: higher P wins
    ({"objective": "precision_at_recall", "min_recall": 0.5}, 0.75),      # P=1, R=2/3
    ({"objective": "precision_at_recall", "min_recall": 0.3}, 0.75),      # P=1 tie: higher R wins
    ({"objective": "precision_at_recall", "min_recall": 1.0}, 0.55),      # P=.75
])
def test_constrained_objectives(objective, expected):
    assert choose_threshold(Y, P, objective) == pytest.approx(expected)


def test_threshold_reproduces_the_operating_point():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.clip(0.35 * y + rng.uniform(0, 0.65, 300), 0, 1)
    for objective in ({"objective": "best_f1"},
                      {"objective": "recall_at_precision", "min_precision": 0.9},
                      {"objective": "precision_at_recall", "min_recall": 0.95}):
        t = choose_threshold(y, p, objective)
        m = binary_metrics(y, p, t)
        if objective["objective"] == "recall_at_precision":
            assert m["precision"] >= 0.9
        if objective["objective"] == "precision_at_recall":
            assert m["recall"] >= 0.95
        assert not np.any(p == t)                   # never on a validation score


def test_lowest_point_threshold_and_keras_shape():
    y = np.array([1, 1, 1, 0])
    p = np.array([[0.2], [0.3], [0.4], [0.9]], dtype=np.float32)   # (n, 1) like a sigmoid output
    # best F1: everything positive (P=.75, R=1, F1=.857) -> half the lowest score
    assert choose_threshold(y, p, {"objective": "best_f1"}) == pytest.approx(0.1)


def test_ties_share_one_operating_point():
    y = [1, 0, 1, 0]
    p = [0.5, 0.5, 0.5, 0.1]
    assert choose_threshold(y, p, {"objective": "best_f1"}) == pytest.approx(0.3)


def test_unreachable_precision_quotes_the_objective():
    objective = {"objective": "recall_at_precision", "min_precision": 0.9}
    with pytest.raises(ThresholdUnreachable) as e:
        choose_threshold([0, 1], [0.9, 0.1], objective)
    msg = str(e.value)
    assert '{"min_precision": 0.9, "objective": "recall_at_precision"}' in msg
    assert "unreachable" in msg and "0.5000" in msg and "best_f1" in msg
    assert isinstance(e.value, ValueError)


def test_fallback_objective():
    objective = {"objective": "recall_at_precision", "min_precision": 0.9, "fallback": "best_f1"}
    assert choose_threshold([0, 1], [0.9, 0.1], objective) == pytest.approx(0.05)
    # not used when the constraint can be met
    assert choose_threshold(Y, P, {**objective, "min_precision": 1.0}) == pytest.approx(0.75)


@pytest.mark.parametrize("objective, expected", [
    ({"objective": "max_auc"}, r'unknown threshold objective \{"objective": "max_auc"\}; allowed: '
                               r"best_f1, recall_at_precision, precision_at_recall"),
    ("best_f1", r'unknown threshold objective "best_f1"'),
    ({"objective": "recall_at_precision"}, r"min_precision must be a number in \(0, 1\], got None"),
    ({"objective": "recall_at_precision", "min_precision": 1.5}, r"got 1.5"),
    ({"objective": "precision_at_recall", "min_recall": 0}, r"min_recall must be a number"),
])
def test_bad_objectives(objective, expected):
    with pytest.raises(ValueError, match=expected):
        choose_threshold(Y, P, objective)


def test_no_positives():
    with pytest.raises(ValueError, match="no positive examples"):
        choose_threshold([0, 0, 0], [0.1, 0.2, 0.3], {"objective": "best_f1"})


@pytest.mark.parametrize("y, p, expected", [
    ([0, 1], [0.1], "2 labels but 1 probabilities"),
    ([0, 2], [0.1, 0.2], r"labels must be in 0..1"),
    ([0, 1], [0.1, 1.2], r"probabilities in \[0, 1\]"),
    ([0, 1], [0.1, np.nan], r"probabilities in \[0, 1\]"),
])
def test_bad_inputs(y, p, expected):
    with pytest.raises(ValueError, match=expected):
        binary_metrics(y, p, 0.5)


def test_binary_metrics_by_hand():
    m = binary_metrics(Y, P, 0.55)
    # AP: precision at each positive's rank (1, 2, 4) = (1 + 1 + 3/4) / 3
    assert m["pr_auc"] == pytest.approx(11 / 12)
    # ROC-AUC: 11 of the 12 (positive, negative) pairs are ordered right (0.6 < 0.7)
    assert m["roc_auc"] == pytest.approx(11 / 12)
    assert m["precision"] == pytest.approx(0.75) and m["recall"] == 1.0
    assert m["f1"] == pytest.approx(6 / 7) and m["accuracy"] == pytest.approx(6 / 7)
    assert m["threshold"] == 0.55 and m["positives"] == 3 and m["negatives"] == 4
    assert m["confusion"] == {"tn": 3, "fp": 1, "fn": 0, "tp": 3}
    assert json.loads(json.dumps(m)) == m
    assert all(type(v) in (float, int, dict) for v in m.values())


def test_binary_metrics_edge_cases():
    nothing = binary_metrics([0, 1, 1], [0.1, 0.2, 0.3], 0.99)
    assert nothing["precision"] == 0.0 and nothing["recall"] == 0.0 and nothing["f1"] == 0.0
    one_class = binary_metrics([0, 0], [0.1, 0.7], 0.5)
    assert one_class["roc_auc"] is None and one_class["pr_auc"] is None
    json.dumps(one_class)


def test_multiclass_metrics_by_hand():
    y = [0, 0, 1, 1, 2, 2]
    pred = [0, 1, 1, 1, 2, 0]
    probs = np.eye(3)[pred] * 0.8 + 0.1
    m = multiclass_metrics(y, probs, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class_accuracy"] == {"a": 0.5, "b": 1.0, "c": 0.5}
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["support"] == {"a": 2, "b": 2, "c": 2}
    assert json.loads(json.dumps(m)) == m


def test_multiclass_class_without_examples():
    m = multiclass_metrics([0, 0], [[0.9, 0.1], [0.2, 0.8]], ["x", "y"])
    assert m["per_class_accuracy"] == {"x": 0.5, "y": None}
    assert m["confusion_matrix"] == [[1, 1], [0, 0]]


def test_multiclass_shape_mismatch():
    with pytest.raises(ValueError,
                       match=r"probs must have shape \(n, 3\) for 3 classes, got \(2, 2\)"):
        multiclass_metrics([0, 1], [[0.5, 0.5], [0.5, 0.5]], ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"labels must be in 0..1"):
        multiclass_metrics([0, 2], [[0.5, 0.5], [0.5, 0.5]], ["a", "b"])


def _splits(x, y, seed=0):
    from sklearn.model_selection import train_test_split

    x_tr, x_rest, y_tr, y_rest = train_test_split(x, y, test_size=0.4, stratify=y,
                                                  random_state=seed)
    x_va, x_te, y_va, y_te = train_test_split(x_rest, y_rest, test_size=0.5, stratify=y_rest,
                                              random_state=seed)
    return x_tr, y_tr, x_va, y_va, x_te, y_te


def test_baseline_on_synthetic_is_json_ready():
    from training.data import synthetic_transactions

    ds = synthetic_transactions(n=3000, fraud_rate=0.05, seed=1)
    result = gradient_boosting_baseline(*_splits(ds.x, ds.y), objective={"objective": "best_f1"},
                                        seed=0)
    assert result["model"] == "HistGradientBoostingClassifier"
    assert result["params"]["class_weight"] == "balanced" and result["params"]["random_state"] == 0
    assert result["threshold"] == result["validation"]["threshold"] == result["test"]["threshold"]
    assert result["objective"] == {"objective": "best_f1"}
    assert result["test"]["pr_auc"] > 0.9          # the synthetic frauds are easy
    assert json.loads(json.dumps(result)) == result


def test_baseline_probabilities_on_request():
    from training.data import synthetic_transactions

    ds = synthetic_transactions(n=2000, fraud_rate=0.05, seed=2)
    parts = _splits(ds.x, ds.y)
    result = gradient_boosting_baseline(*parts, objective={"objective": "best_f1"}, seed=0,
                                        return_probabilities=True)
    assert result.pop("p_test").shape == (len(parts[5]),)
    assert result.pop("p_validation").shape == (len(parts[3]),)
    json.dumps(result)


@pytest.mark.skipif(not (SHARED / "creditcard").is_dir(), reason=f"no card data at {SHARED}")
def test_baseline_on_real_card_data():
    from training.data import load_dataset

    ds = load_dataset("creditcard", data_dir=SHARED, limit=1500, seed=0)
    objective = {"objective": "recall_at_precision", "min_precision": 0.9, "fallback": "best_f1"}
    result = gradient_boosting_baseline(*_splits(ds.x, ds.y), objective=objective, seed=0)
    assert result["test"]["pr_auc"] > 0.5
    assert result["test"]["positives"] > 0 and result["validation"]["positives"] > 0
    json.dumps(result)


def test_objectives_constant():
    assert evaluate.OBJECTIVES == ("best_f1", "recall_at_precision", "precision_at_recall")
