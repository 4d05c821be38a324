"""CI smoke of the benchmark: ``python -m bench --smoke --train-tiny`` runs end to end
(tiny models, every server kind, about 10 s of load) and prints the full report."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = Path(os.environ.get("LAYERSCOPE_DATA_DIR", ROOT.parent / "shared" / "datasets"))


@pytest.mark.skipif(shutil.which("wrk") is None, reason="the load generator wrk is missing")
@pytest.mark.skipif(
    not (DATA_DIR / "creditcard").is_dir() or not (DATA_DIR / "fashion-mnist").is_dir(),
    reason=f"no card / Fashion-MNIST data under {DATA_DIR}",
)
def test_bench_smoke(tmp_path):
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "LAYERSCOPE_DATA_DIR": str(DATA_DIR),
        "TMPDIR": str(tmp_path),
    }
    out = tmp_path / "report.md"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--train-tiny", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    report = proc.stdout
    assert out.read_text().strip() == report.strip()
    for heading in (
        "## Machine",
        "## HTTP (wrk)",
        "## In-process",
        "## Targets (issue 6)",
        "## Worker memory",
    ):
        assert heading in report, heading
    http_part = report.split("## HTTP (wrk)", 1)[1].split("## In-process", 1)[0]
    http = [r for r in http_part.splitlines() if re.match(r"\| (fraud|fashion) \| ", r)]
    assert len(http) >= 20
    servers = {r.split("|")[2].strip() for r in http}
    assert {"HTTP ceiling (constant)", "naive (Flask + model.predict)"} <= servers
    assert any(s.startswith("layerscope batching=on") for s in servers)
    assert any(s.startswith("layerscope batching=off") for s in servers)
    for r in http:  # every cell served requests and none failed
        cells = [c.strip() for c in r.strip("|").split("|")]
        assert float(cells[4].replace(",", "")) > 0, r
        assert cells[-1] == "0", r
    assert "fraud single-row c16: Layerscope / HTTP ceiling" in report
    assert "fraud single-row c16: Layerscope / naive" in report
    assert "fashion c32 (auto): batching on / off req/s" in report
    assert "all-hidden-layer activations (JSON values + stats) / predict" in report
    assert "all-hidden-layer activations (OIP binary values) / predict" in report
    assert "Traceback" not in proc.stderr
