"""The bench's report logic: per-round ratios, medians, the interleaved cell order, and the
wrk script and summary it reads (the end-to-end run is tests/perf/test_bench_smoke.py)."""

from __future__ import annotations

import os
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench.load import LoadResult, Payload, parse_wrk, run_load, run_wrk, wrk_script
from bench.run import (
    Row,
    Spec,
    cell_order,
    check,
    find,
    http_table,
    p50,
    parse_args,
    per_round,
    rps,
    schedule,
)


def result(rps_: float, p50_ms: float = 1.0, c: int = 1, errors: int = 0) -> LoadResult:
    return LoadResult("http://x", c, 100, rps_, p50_ms, 2 * p50_ms, 3 * p50_ms, errors)


def test_ratios_are_taken_within_each_round_and_the_median_is_reported():
    ours = {0: Row("m", "a", "single", result(100)), 1: Row("m", "a", "single", result(50))}
    base = {0: Row("m", "b", "single", result(200)), 1: Row("m", "b", "single", result(60))}
    assert per_round(ours, base, rps) == [0.5, 50 / 60]
    line = check("x", [0.5, 0.9, 0.8], ">= 0.7")
    assert line == "| x | 0.80 | 0.50, 0.90, 0.80 | >= 0.7 | met |"
    assert check("x", [1.6, 1.4], "<= 1.5").endswith("| <= 1.5 | met |")  # median 1.5
    assert "**not met**" in check("x", [], ">= 2")  # nothing measured is never met


def test_rounds_missing_on_one_side_are_left_out():
    a = {0: Row("m", "a", "single", result(10, 2.0)), 2: Row("m", "a", "single", result(10, 3))}
    b = {0: Row("m", "b", "single", result(10, 1.0)), 1: Row("m", "b", "single", result(10, 1))}
    assert per_round(a, b, p50) == [2.0]


def test_find_keys_a_cell_by_round():
    rows = [
        Row("fraud", "layerscope batching=auto", "single", result(1, c=16), round=r)
        for r in range(3)
    ] + [Row("fraud", "layerscope batching=auto", "single", result(1, c=1), round=0)]
    assert sorted(find(rows, "fraud", "layerscope", "single", 16)) == [0, 1, 2]
    assert find(rows, "fraud", "naive", "single", 16) == {}


def test_http_table_gives_medians_the_spread_and_summed_errors():
    rows = [
        Row("fraud", "s", "batch 4", result(v, p, c=4, errors=e), rows=4, round=i)
        for i, (v, p, e) in enumerate([(100, 1.0, 0), (300, 3.0, 1), (200, 2.0, 2)])
    ]
    (line,) = http_table(rows)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells == ["fraud", "s", "batch 4", "4", "200.0", "100–300", "800", "2.000",
                     "4.000", "6.000", "3"]  # fmt: skip


def test_activations_run_right_after_the_single_row_c1_cell():
    spec = Spec("layerscope", "layerscope", ("auto", "auto"))
    plan = [
        ("single", "/p", b"", [1, 4, 16], 1),
        ("batch 256", "/p", b"", [4], 256),
        ("activations binary", "/v", b"", [1], 1),
        ("activations", "/a", b"", [1], 1),
    ]

    class M:
        name = "fraud"

    order = cell_order([spec], {spec.label: {"fraud": plan}}, M)
    assert order == [
        ("single", 1),
        ("activations", 1),
        ("activations binary", 1),
        ("single", 4),
        ("single", 16),
        ("batch 256", 4),
    ]


def test_schedule_runs_each_cell_on_every_server_that_has_it_in_turn():
    ours = Spec("layerscope", "layerscope", ("auto", "auto"))
    ceiling = Spec("ceiling", "ceiling")
    single, batch = ("single", "/p", b"1", [1, 16], 1), ("batch 256", "/p", b"2", [4], 256)
    plans = {
        ours.label: {"fraud": [single, batch]},
        ceiling.label: {"fraud": [("single", "/c", b"3", [1, 16], 1)]},
    }

    class M:
        name = "fraud"

    got = [
        (spec.label, server, request, path, c, rows)
        for _, spec, server, request, path, _, c, rows in schedule(
            [ours, ceiling], ["server A", "server B"], plans, [M]
        )
    ]
    assert got == [
        ("layerscope", "server A", "single", "/p", 1, 1),
        ("ceiling", "server B", "single", "/c", 1, 1),
        ("layerscope", "server A", "single", "/p", 16, 1),
        ("ceiling", "server B", "single", "/c", 16, 1),
        ("layerscope", "server A", "batch 256", "/p", 4, 256),
    ]


def test_wrk_script_quotes_paths_and_headers():
    payload = Payload(b"", "application/octet-stream", (("X-K", 'v"1'),))
    script = wrk_script('/tmp/a "b"\\c', payload)
    assert 'io.open("/tmp/a \\"b\\"\\\\c", "rb")' in script
    assert 'wrk.headers["Content-Type"] = "application/octet-stream"' in script
    assert 'wrk.headers["X-K"] = "v\\"1"' in script


def test_parse_wrk_reads_the_summary_line_and_says_when_it_is_missing():
    out = 'Running 1s test\nWRK-JSON {"requests": 5, "duration_us": 1000000, "p50": 812}\n'
    assert parse_wrk(out) == {"requests": 5, "duration_us": 1000000, "p50": 812}
    with pytest.raises(RuntimeError, match="no summary"):
        parse_wrk("Running 1s test\n")


def test_run_load_rejects_an_unknown_generator():
    with pytest.raises(ValueError, match="Received: generator='ab'"):
        run_load("http://127.0.0.1:9/", b"{}", concurrency=1, seconds=1, generator="ab")


class _Echo(BaseHTTPRequestHandler):
    """200 for a JSON POST carrying the test header, 400 otherwise."""

    protocol_version = "HTTP/1.1"
    seen: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        ok = self.headers["X-Bench"] == "yes" and body == b'{"instances": [[1]]}'
        self.seen.append(self.headers["Content-Type"])
        data = b"{}"
        self.send_response(200 if ok else 400)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.mark.skipif(shutil.which("wrk") is None, reason="the load generator wrk is missing")
def test_run_wrk_against_a_real_server_counts_requests_latencies_and_errors():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        good = Payload(b'{"instances": [[1]]}', "application/json", (("X-Bench", "yes"),))
        ok = run_wrk(url, good, concurrency=2, seconds=1)
        bad = run_wrk(url, b"{}", concurrency=1, seconds=1)
    finally:
        server.shutdown()
    assert ok.requests > 10 and ok.errors == 0 and ok.rps > 0
    assert 0 < ok.p50_ms <= ok.p90_ms <= ok.p99_ms
    assert bad.requests > 10 and bad.errors == bad.requests  # every 400 is an error
    assert set(_Echo.seen) == {"application/json"}


def test_wrk_is_what_the_bench_runs_by_default_and_the_smoke_is_one_round():
    assert parse_args(["--models", "fraud"]).load_generator == "wrk"
    assert parse_args(["--models", "fraud"]).rounds == 3
    smoke = parse_args(["--models", "fraud", "--smoke"])
    assert (smoke.rounds, smoke.duration) == (1, 1.0)  # wrk runs whole seconds


def test_the_binary_activations_request_returns_every_hidden_layer(perf_repo):
    """The bench's OIP layer-outputs body, sent to a real app: every hidden layer and the
    prediction come back as binary tensors equal to the native activations' JSON values."""
    import json

    import numpy as np

    from bench.run import binary_layer_outputs
    from service import create_app
    from service.binary_tensors import decode_response

    version = perf_repo / "digits" / "1"
    meta = json.loads((version / "metadata.json").read_text())
    with np.load(version / "reference.npz") as ref:
        x = np.asarray(ref["x"][:1], dtype=np.float32)
    app = create_app(
        {"model_repository": perf_repo, "poll_interval": 0, "load_in_background": False}
    )
    client = app.test_client()
    payload = binary_layer_outputs(x, meta)
    response = client.post(
        "/v2/models/digits/infer", data=payload.data, content_type=payload.content_type
    )
    assert response.status_code == 200, response.data[:300]
    body, arrays = decode_response(response.data, response.headers)
    hidden = [layer["name"] for layer in meta["layers"] if layer["hidden"]]
    assert [o["name"] for o in body["outputs"]] == [*hidden, "output"]
    native = client.post(
        "/models/digits/activations", json={"instances": x.tolist(), "include": ["values"]}
    ).json
    for name in hidden:
        want = np.asarray(native["instances"][0]["layers"][name]["values"], dtype=np.float32)
        np.testing.assert_array_equal(np.asarray(arrays[name]).reshape(want.shape), want)


def test_the_report_names_the_settings_the_servers_inherit(monkeypatch):
    from bench.run import environment_settings

    for key in [k for k in os.environ if k.startswith("LAYERSCOPE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("LAYERSCOPE_DATA_DIR", "/data")  # the bench's own input, not a setting
    assert environment_settings() == "none (the service defaults)"
    monkeypatch.setenv("LAYERSCOPE_ACTIVATION_PARITY", "layer-scaled")
    monkeypatch.setenv("LAYERSCOPE_RUNTIME", "keras")  # set per mode by the bench
    assert environment_settings() == "`LAYERSCOPE_ACTIVATION_PARITY=layer-scaled`"


def test_servers_run_with_the_service_default_threads_unless_told():
    from service.settings import Settings

    assert parse_args([]).threads == Settings.model_fields["threads"].default == 4
    assert parse_args(["--threads", "16"]).threads == 16


def test_a_skipped_comparison_gets_no_verdict():
    """--skip naive: the naive ratio is left out, not reported "not met"; a server that
    ran but measured nothing still is."""
    from pathlib import Path

    from bench.run import Model, report

    fraud = Model("fraud", "tabular", Path("."), b"", b"", Payload(b""), 256, b"", Payload(b""))
    machine = dict.fromkeys(("cpu", "nproc", "python", "load_before", "load_after", "command"), "x")
    ours = "layerscope batching=auto runtime=auto"
    rows = [Row("fraud", ours, "single", result(900, c=16)),
            Row("fraud", "HTTP ceiling (constant)", "single", result(1000, c=16))]  # fmt: skip
    args = parse_args(["--models", "fraud", "--modes", "auto:auto", "--skip", "naive"])
    text = report(rows, {}, [], [fraud], args, machine)
    assert (
        "| fraud single-row c16: Layerscope / HTTP ceiling | 0.90 | 0.90 | >= 0.7 | met |" in text
    )
    assert "Layerscope / naive" not in text
    args = parse_args(["--models", "fraud", "--modes", "auto:auto"])
    assert "| fraud single-row c16: Layerscope / naive | n/a | n/a | >= 30 | **not met** |" in (
        report(rows, {}, [], [fraud], args, machine)
    )


def test_bounds_come_from_the_ceilings_one_row_rate_and_say_when_a_target_is_out_of_reach():
    """256-row requests can go no faster than the ceiling answers one-row requests; the
    batching ratio no higher than ceiling / batching off."""
    from pathlib import Path

    from bench.run import Model, bounds

    fraud = Model("fraud", "tabular", Path("."), b"", b"", Payload(b""), 256, b"", Payload(b""))
    fashion = Model("fashion", "image", Path("."), b"", b"", Payload(b""), 64, b"", Payload(b""))
    ceiling = "HTTP ceiling (constant)"
    rows = [
        Row("fraud", ceiling, "single", result(6000, c=4), round=0),
        Row("fraud", ceiling, "single", result(4000, c=4), round=1),
        Row("fashion", ceiling, "single", result(5000, c=4)),
        Row("fashion", ceiling, "single", result(5500, c=32), round=0),
        Row("fashion", ceiling, "single", result(4500, c=32), round=1),
        Row("fashion", "layerscope batching=off runtime=litert", "single", result(2000, c=32)),
        Row("fashion", "layerscope batching=off runtime=keras", "single", result(3000, c=32)),
    ]
    inproc = {
        ("fraud", "auto"): {"batch_rows_per_s": 10_240_000},
        ("fashion", "auto"): {"batch_rows_per_s": 32_000},
    }
    args = parse_args(["--modes", "auto:auto,off:litert,off:keras"])
    table = bounds(rows, inproc, [fraud, fashion], args)
    assert (
        "| fraud 256-row requests: HTTP rows/s / in-process rows/s | 0.12 | 0.15, 0.10 | >= 0.6 "
        "| ceiling's one-row req/s at c4 x 256 rows | **no** |" in table
    )
    assert (
        "| fashion 64-row requests: HTTP rows/s / in-process rows/s | 10.00 | 10.00 | >= 0.6 "
        "| ceiling's one-row req/s at c4 x 64 rows | yes |" in table
    )
    assert any(line.startswith("| fashion c32 (litert): batching on / off req/s | 2.50 |")
               and line.endswith("| yes |") for line in table)  # fmt: skip
    assert any(line.startswith("| fashion c32 (keras): batching on / off req/s | 1.67 |")
               and line.endswith("| **no** |") for line in table)  # fmt: skip
    assert bounds([], inproc, [fraud, fashion], args) == []  # no ceiling cells, no section


def test_the_decode_bench_reads_every_model_both_ways(perf_repo, model_names, capsys):
    """bench/decode.py stops if the shortcut refuses or changes a bench body; on the
    trained models it must accept them all and print a row per model and body."""
    from bench.decode import main

    assert main(["--repository", str(perf_repo), "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    for name in model_names:
        assert f"| {name} | 1 instance |" in out
        assert sum(line.startswith(f"| {name} | ") for line in out.splitlines()) == 2
