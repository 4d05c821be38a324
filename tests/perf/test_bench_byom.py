"""CI smoke of ``python -m bench.byom --tiny``: a keras.applications MobileNetV2 (32 x 32)
dropped bare, loaded through ModelRuntime in a fresh process, predicted directly and
through the app, and asked for every layer's statistics; the Markdown table comes out
whole with a figure in every row."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_byom_tiny(tmp_path):
    out = tmp_path / "byom.md"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.byom", "--tiny", "--repeats", "3", "--load-rounds", "1",
         "--out", str(out)],
        cwd=ROOT,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2",
             "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    report = proc.stdout
    assert out.read_text() == report
    assert "## Bring your own model: keras.applications MobileNetV2 (32 x 32" in report
    assert re.search(r"^423,018 parameters, 156 layers, input \[32, 32, 3\]", report, re.M)
    load = re.findall(
        r"^\| ModelRuntime\.load \(TensorFlow\) \| ([\d.]+) \| ([\d.]+) \| tensorflow \|$",
        report,
        re.M,
    )
    assert len(load) == 1 and float(load[0][0]) > 0
    for label in (
        "runtime.predict_outputs, 1 image",
        "runtime.predict_outputs, 8 images",
        "runtime.activations, every layer, 1 image",
        "POST /predict, 1 image (WSGI test client)",
        'POST /activations, every layer, "include": ["stats"], 1 image',
    ):
        row = next(r for r in report.splitlines() if r.startswith(f"| {label} |"))
        p50, p90, low, n = (c.strip() for c in row.split("|")[2:6])
        assert 0 < float(low) <= float(p50) <= float(p90) and n == "3", row
    assert re.search(r"stats only\) / predict, through the app: [\d.]+x \(155 layers\)", report)
    assert "Traceback" not in proc.stderr
