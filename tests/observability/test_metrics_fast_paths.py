"""The metrics' cheaper paths give exactly what the code they replace gave:
``layer_summary`` is ``ndarray.mean`` bit for bit, and a runtime's label children are
looked up again only for a different runtime object."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from service import metrics

ROOT = Path(__file__).resolve().parents[2]


def reference_summary(values):
    flat = np.asarray(values, dtype=np.float32).reshape(len(values), -1)
    return flat.mean(axis=1), (flat <= 0).mean(axis=1)


shapes = st.tuples(st.integers(1, 20), st.integers(1, 70)) | st.tuples(
    st.integers(1, 4), st.integers(1, 6), st.integers(1, 6), st.integers(1, 5)
)


@settings(max_examples=400, deadline=None)
@given(
    arrays(
        np.float32,
        shapes,
        elements=st.floats(-(2.0**100), 2.0**100, width=32) | st.floats(-2, 2, width=32),
    )
)
def test_layer_summary_is_ndarray_mean_bit_for_bit(values):
    means, inactive = metrics.layer_summary(values)
    ref_means, ref_inactive = reference_summary(values)
    assert means.dtype == ref_means.dtype and inactive.dtype == ref_inactive.dtype
    assert means.tobytes() == ref_means.tobytes()
    assert inactive.tobytes() == ref_inactive.tobytes()


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32])
def test_layer_summary_of_other_dtypes(dtype):
    values = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype) / 3
    means, inactive = metrics.layer_summary(values)
    ref_means, ref_inactive = reference_summary(values)
    assert means.tobytes() == ref_means.tobytes()
    assert inactive.tobytes() == ref_inactive.tobytes()


class Runtime:
    """What _RuntimeMetrics reads of a runtime: its name, version and metadata."""

    def __init__(self, name: str, threshold: float | None = 0.3):
        self.name, self.version = name, 1
        self.metadata = {
            "class_names": ["no", "yes"],
            "task": "binary_classification",
            "threshold": threshold,
        }
        # the runtime's views of its first output
        self.task, self.class_names, self.threshold = (
            "binary_classification",
            ["no", "yes"],
            threshold,
        )


def test_runtime_children_are_resolved_once_per_runtime_object():
    a, b = Runtime("cache-a"), Runtime("cache-b")
    first = metrics._runtime_metrics(a)
    assert metrics._runtime_metrics(a) is first
    other = metrics._runtime_metrics(b)
    assert other is not first and other.model == "cache-b"


def test_an_entry_never_answers_for_another_object_with_the_same_id():
    old = Runtime("cache-old", threshold=0.9)
    metrics._runtime_metrics(old)
    key = id(old)
    del old
    gc.collect()
    new = Runtime("cache-new", threshold=0.1)
    # as if ``new`` had been given the dead runtime's id
    metrics._by_runtime[id(new)] = metrics._by_runtime.pop(key)
    found = metrics._runtime_metrics(new)
    assert found.model == "cache-new" and found.threshold == 0.1
    assert all(ref() is not None for ref, _ in metrics._by_runtime.values())


FORK_SCRIPT = r"""
import json, os, sys
from prometheus_client import CollectorRegistry, multiprocess, values
from service import metrics

assert values.ValueClass._multiprocess
metrics.IN_FLIGHT.inc()  # created before the fork, in the parent's files
child = os.fork()
if child == 0:  # a Gunicorn worker, in short
    assert metrics.current_pid() == os.getpid() != int(sys.argv[1])
    metrics.REQUESTS.labels("m", "1", "/p", "POST", "200").inc(3)
    metrics.IN_FLIGHT.inc(2)
    os._exit(0)
os.waitpid(child, 0)
metrics.REQUESTS.labels("m", "1", "/p", "POST", "200").inc()
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry)
got = {
    s.name: s.value
    for m in registry.collect() for s in m.samples
    if s.name in ("layerscope_requests_total", "layerscope_requests_in_flight")
}
files = sorted(os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
print(json.dumps({"child": child, "files": files, "got": got}))
"""


def test_the_cached_pid_follows_a_fork_like_os_getpid(tmp_path):
    """After a fork the child's writes go to files named by its own pid, and the
    aggregate counts parent and child: what os.getpid() per write gave."""
    import json
    import subprocess
    import sys

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT, str(os.getpid())],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert f"counter_{out['child']}.db" in out["files"]
    assert f"gauge_livesum_{out['child']}.db" in out["files"]
    assert len([f for f in out["files"] if f.startswith("counter_")]) == 2  # parent + child
    assert out["got"]["layerscope_requests_total"] == 4.0
    assert out["got"]["layerscope_requests_in_flight"] == 3.0
