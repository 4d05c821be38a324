"""Metrics, dashboard and logs against real parts: the project's entrypoint running
Gunicorn with 2 workers over a tmp repository (a tiny fraud-shaped model, version 2
corrupt), scraped every second by Debian's Prometheus with the project's alert rules.

Tests run in file order and share the stack; the worker-kill test comes last."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.observability.stack import (
    FEATURES,
    MODEL,
    ROOT,
    Prometheus,
    Server,
    publish_corrupt,
    publish_tabular,
    samples,
    wait_for,
)

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None or shutil.which("promtool") is None,
    reason="needs Debian's prometheus package",
)

PREDICT = "/models/<name>/predict"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "layerscope.json"
# TensorFlow's C++ runtime (absl) writes these to stderr before Python logging exists.
ABSL_LINE = re.compile(
    r"^([IWEF]\d{4} [\d:.]+ +\d+ \S+:\d+\] |WARNING: All log messages before absl)"
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("live")
    repo = tmp / "repo"
    v1 = publish_tabular(repo, seed=0)
    publish_corrupt(v1)  # version 2: checksum mismatch, must be skipped and counted
    server = Server(
        repo,
        tmp,
        workers=2,
        LAYERSCOPE_ACTIVATION_SAMPLE_EVERY="2",
        LAYERSCOPE_ACTIVATION_SAMPLE_INTERVAL="0",
    ).start()
    prom = None
    try:
        server.wait_ready()
        wait_loaded(server, 1)
        (tmp / "prom").mkdir()
        prom = Prometheus(f"127.0.0.1:{server.port}", tmp / "prom").start()
        yield server, prom, repo
    finally:
        if prom is not None:
            prom.stop()
        server.stop()


def wait_loaded(server: Server, version: int, timeout: float = 180) -> set[int]:
    """Every current worker has logged ``model_loaded`` for ``version`` (a /readyz poll
    cannot tell which worker answered)."""

    def done():
        workers = server.worker_pids()
        loaded = {
            r["pid"]
            for r in server.log_records()
            if r.get("event") == "model_loaded" and r.get("version") == version
        }
        return len(workers) == 2 and workers <= loaded and workers

    return wait_for(done, timeout, interval=0.5, what=f"every worker loaded v{version}")


def predict(server: Server, rows, request_id: str | None = None, path: str | None = None):
    headers = {"X-Request-ID": request_id} if request_id else {}
    url = f"{server.url}{path or f'/models/{MODEL}/predict'}"
    return requests.post(url, json={"instances": rows}, headers=headers, timeout=30)


def send(server: Server, n: int, tag: str, rows_per_request: int = 2) -> list[dict]:
    """n predict requests from 4 threads, fresh connection each (spreads over workers)."""
    x = samples(n * rows_per_request, seed=len(tag))

    def one(i: int) -> dict:
        rows = x[i * rows_per_request : (i + 1) * rows_per_request].tolist()
        response = predict(server, rows, f"{tag}-{i}")
        assert response.status_code == 200, response.text
        assert response.headers["X-Request-ID"] == f"{tag}-{i}"
        return response.json()

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, range(n)))


def access_pids(server: Server, tag: str) -> dict[str, int]:
    return {
        r["request_id"]: r["pid"]
        for r in server.log_records()
        if r.get("logger") == "layerscope.access"
        and str(r.get("request_id", "")).startswith(f"{tag}-")
    }


def test_request_counter_equals_requests_sent_across_workers(stack):
    server, prom, _ = stack
    n = 40
    bodies = send(server, n, "count")
    pids = wait_for(
        lambda: (p := access_pids(server, "count")) and len(p) == n and p,
        10,
        what="access log lines",
    )
    per_worker: dict[int, int] = {}
    for pid in pids.values():
        per_worker[pid] = per_worker.get(pid, 0) + 1
    assert len(per_worker) >= 2, f"all requests went to one worker: {per_worker}"

    sel = f'endpoint="{PREDICT}", model="{MODEL}"'
    total = prom.wait_value(f"sum(layerscope_requests_total{{{sel}}})", n)
    assert total == n
    assert prom.scalar(f'sum(layerscope_requests_total{{{sel}, code="200", version="1"}})') == n
    assert prom.scalar(f"sum(layerscope_request_duration_seconds_count{{{sel}}})") == n
    bucket_inf = f'sum(layerscope_request_duration_seconds_bucket{{{sel}, le="+Inf"}})'
    assert prom.scalar(bucket_inf) == n
    compute = 'layerscope_model_compute_duration_seconds_count{operation="predict"}'
    assert prom.wait_value(f"sum({compute})", n) == n
    assert prom.scalar("sum(layerscope_batch_size_sum)") == 2 * n
    assert prom.scalar("sum(layerscope_fraud_score_count)") == 2 * n

    decisions = [p["decision"] for body in bodies for p in body["predictions"]]
    for label in ("legit", "fraud"):
        expected = decisions.count(label)
        got = prom.scalar(f'sum(layerscope_predictions_total{{class="{label}"}})') or 0
        assert got == expected, label
    positives = prom.scalar('sum(layerscope_fraud_decisions_total{decision="positive"})') or 0
    assert positives == decisions.count("fraud")

    # 1 call in 2 per worker is sampled, 2 rows each, one observation per row and layer
    sampled_rows = sum(count // 2 for count in per_worker.values()) * 2
    mean_count = prom.scalar(
        f'sum(layerscope_layer_activation_mean_count{{model="{MODEL}", layer="dense_1"}})'
    )
    assert mean_count == sampled_rows


def test_promtool_accepts_the_exposition(stack):
    server, _, _ = stack
    response = requests.get(f"{server.url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    result = subprocess.run(
        ["promtool", "check", "metrics"],
        input=response.text,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for family in (
        "layerscope_requests_total",
        "layerscope_request_duration_seconds_bucket",
        "layerscope_model_ready",
        "layerscope_layer_reference_activation_mean",
    ):
        assert family in response.text


def test_model_lifecycle_metrics(stack):
    _, prom, _ = stack
    assert prom.scalar(f'layerscope_model_ready{{model="{MODEL}", version="1"}}') == 1
    assert prom.scalar(f'layerscope_model_ready{{model="{MODEL}", version="2"}}') == 0
    failures = f'sum(layerscope_model_load_failures_total{{model="{MODEL}", reason="checksum"}})'
    assert prom.scalar(failures) == 2  # once per worker
    info = prom.query(f'layerscope_model_info{{model="{MODEL}"}} == 1')
    assert [r["metric"]["version"] for r in info] == ["1"]
    assert info[0]["metric"]["task"] == "binary_classification"
    loaded = prom.scalar(f'layerscope_model_load_timestamp_seconds{{model="{MODEL}"}}')
    assert abs(loaded - time.time()) < 3600


def test_unknown_models_collapse_to_one_label(stack):
    server, prom, _ = stack
    names = ["nope", "x" * 60, "drop-table", "f%C3%BCnf"]
    for name in names:
        response = predict(server, samples(1).tolist(), path=f"/models/{name}/predict")
        assert response.status_code == 404
    sel = f'endpoint="{PREDICT}", code="404"'
    got = prom.wait_value(f'sum(layerscope_requests_total{{{sel}, model="unknown"}})', len(names))
    assert got == len(names)
    models = {r["metric"]["model"] for r in prom.query("layerscope_requests_total")}
    assert models == {MODEL, "unknown"}
    unmatched = requests.get(f"{server.url}/no/such/path", timeout=5)
    assert unmatched.status_code == 404
    endpoints = {
        r["metric"]["endpoint"] for r in prom.query('layerscope_requests_total{code="404"}')
    }
    wait_for(
        lambda: (
            "unmatched"
            in {
                r["metric"]["endpoint"] for r in prom.query('layerscope_requests_total{code="404"}')
            }
        ),
        10,
        what="unmatched endpoint label",
    )
    assert all(not e.startswith("/no/") for e in endpoints)


def test_hot_reload_is_counted_and_served(stack):
    server, prom, repo = stack
    publish_tabular(repo, seed=1)  # version 3
    wait_loaded(server, 3)
    sel = f'model="{MODEL}"'
    assert prom.wait_value(f"sum(layerscope_model_reloads_total{{{sel}}})", 2, timeout=120) == 2
    assert prom.wait_value(f'layerscope_model_ready{{{sel}, version="3"}}', 1, timeout=30) == 1
    bodies = send(server, 10, "reload", rows_per_request=1)
    assert {body["version"] for body in bodies} == {3}
    query = f'sum(layerscope_requests_total{{{sel}, version="3", endpoint="{PREDICT}"}})'
    assert prom.wait_value(query, 10) == 10


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    return out


def substitute(expr: str) -> str:
    return (
        expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "5s")
        .replace("$__range", "10m")
        .replace("$model", MODEL)
    )


def test_every_dashboard_query_returns_data(stack):
    server, prom, _ = stack
    send(server, 6, "dash")
    time.sleep(3)  # a few scrapes after the traffic
    queries = dashboard_queries()
    assert len(queries) >= 15
    empty = []
    for title, expr in queries:
        query = substitute(expr)
        assert "$" not in query, f"unsubstituted variable in {title}: {query}"
        if not prom.query(query):  # parses (else query() raises) and returns data
            empty.append((title, query))
    assert not empty, empty


def test_alert_rules_evaluate_against_real_metrics(stack):
    _, prom, _ = stack
    groups = requests.get(f"{prom.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == 13
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    drift = wait_for(
        lambda: prom.query("layerscope:layer_activation_mean:relative_drift"),
        20,
        what="drift recording rule",
    )
    assert {r["metric"]["layer"] for r in drift} == {"dense_1", "dense_2"}
    alerts = requests.get(f"{prom.url}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    firing = {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}
    assert "LayerscopeModelNotReady" not in firing and "LayerscopeDown" not in firing
    assert "LayerscopeModelLoadFailed" in firing  # the corrupt version 2


def test_json_access_logs_with_request_ids_and_no_input_data(stack):
    server, _, _ = stack
    row = dict(zip(FEATURES, samples(1)[0].tolist(), strict=True))
    row["Amount"] = 98765.4321
    kept = requests.post(
        f"{server.url}/models/{MODEL}/predict?api_key=s3cr3t-t0ken",
        json={"instances": [row]},
        headers={"X-Request-ID": "obs-kept:42"},
        timeout=30,
    )
    assert kept.status_code == 200 and kept.headers["X-Request-ID"] == "obs-kept:42"
    generated = predict(server, samples(1).tolist())
    gen_id = generated.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", gen_id)
    invalid_ids = ["has spaces in it", "x" * 129, "semi;colon"]
    replaced = [
        predict(server, samples(1).tolist(), rid).headers["X-Request-ID"] for rid in invalid_ids
    ]
    assert all(re.fullmatch(r"[0-9a-f]{32}", r) for r in replaced)

    def logged():
        ids = {r.get("request_id") for r in server.log_records()}
        return {"obs-kept:42", gen_id, *replaced} <= ids

    wait_for(logged, 10, what="access lines of the requests")
    text = server.log()
    complete = text[: text.rfind("\n") + 1]  # the server may be writing a line right now
    for line in complete.splitlines():
        if ABSL_LINE.match(line):
            continue
        json.loads(line)  # every other line is one JSON object
    records = server.log_records()
    access = {r["request_id"]: r for r in records if r["logger"] == "layerscope.access"}
    line = access["obs-kept:42"]
    assert line["endpoint"] == PREDICT and line["status"] == 200
    assert line["model"] == MODEL and line["version"] == 3 and line["duration_ms"] > 0
    assert line["path"] == f"/models/{MODEL}/predict"
    # no input values, query strings, or rejected header values anywhere in the logs
    for secret in ("98765.4321", "98765.43", "s3cr3t-t0ken", "api_key", *invalid_ids):
        assert secret not in text
    events = [r for r in records if r.get("logger") == "layerscope.events"]
    loaded = {(r["model"], r["version"]) for r in events if r["event"] == "model_loaded"}
    failed = [r for r in events if r["event"] == "model_failed"]
    assert {(MODEL, 1), (MODEL, 3)} <= loaded
    assert failed and all(r["version"] == 2 and "checksum" in r["reason"] for r in failed)


def exposed_total(server: Server) -> float:
    """Sum of the predict request counters in the service's own /metrics."""
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "layerscope_requests_total"
        and sample.labels.get("endpoint") == PREDICT
        and sample.labels.get("model") == MODEL
    )


def test_killed_worker_keeps_counters_monotonic(stack):
    server, prom, _ = stack
    start = time.time()
    sel = f'endpoint="{PREDICT}", model="{MODEL}"'
    before = exposed_total(server)  # the truth, then let Prometheus catch up with it
    assert prom.wait_value(f"sum(layerscope_requests_total{{{sel}}})", before) == before
    workers = server.worker_pids()
    assert len(workers) == 2
    victim = min(workers)
    live_gauge = server.multiproc_dir / f"gauge_livesum_{victim}.db"
    assert live_gauge.exists()
    os.kill(victim, signal.SIGKILL)

    def replaced():
        pids = server.worker_pids()
        return len(pids) == 2 and victim not in pids and pids

    wait_for(replaced, 60, what="gunicorn replacing the killed worker")
    # child_exit -> mark_process_dead: the dead worker's live gauges are gone, its
    # counters stay so the totals do not drop
    wait_for(lambda: not live_gauge.exists(), 10, what="live gauge file removed")
    assert (server.multiproc_dir / f"counter_{victim}.db").exists()
    wait_loaded(server, 3)  # the replacement loaded the served version
    m = 20
    send(server, m, "afterkill", rows_per_request=1)
    assert prom.wait_value(f"sum(layerscope_requests_total{{{sel}}})", before + m) == before + m
    assert prom.scalar("sum(layerscope_requests_in_flight)") == 0
    time.sleep(2)
    end = time.time()
    for expr in (
        f"sum(layerscope_requests_total{{{sel}}})",
        "sum(layerscope_request_duration_seconds_count)",
        "sum(layerscope_model_compute_duration_seconds_count)",
    ):
        series = prom.query_range(expr, start - 5, end, 1)
        values = [float(v) for _, v in series[0]["values"]]
        assert values == sorted(values), f"{expr} dropped: {values}"
    for expr in (
        "rate(layerscope_requests_total[10s])",
        "increase(layerscope_request_duration_seconds_count[10s])",
        "sum(rate(layerscope_requests_total[5s]))",
    ):
        for series in prom.query_range(expr, start - 5, end, 1):
            assert all(float(v) >= 0 for _, v in series["values"]), expr
    resets = prom.query(f"resets(layerscope_requests_total[{int(end - start) + 30}s]) > 0")
    assert resets == [], resets
    assert prom.scalar(f'layerscope_model_ready{{model="{MODEL}", version="3"}}') == 1


def test_dashboard_file_is_the_provisioned_one():
    """The dashboard uses the provisioned data source uid and a model variable."""
    import yaml

    dashboard = json.loads(DASHBOARD.read_text())
    datasource = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    uids = {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p}
    uids |= {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
    assert uids == {datasource["uid"]}
    titles = " | ".join(p["title"] for p in dashboard["panels"]).lower()
    for wanted in (
        "request rate",
        "error ratio",
        "p50 / p95 / p99",
        "compute latency by model",
        "batch size",
        "fraud-score distribution",
        "predictions by class",
        "activation drift per layer",
        "model versions and readiness",
    ):
        assert wanted in titles, wanted
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"model"}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert Path(DASHBOARD).name == "layerscope.json"
