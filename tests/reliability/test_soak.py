"""The CI soak: ``python -m bench.soak --duration 30 --concurrency 32`` against a real
Gunicorn, mixed predict / activations / explain / metrics traffic: zero errors."""

from __future__ import annotations

import json
import os
import subprocess

from .helpers import ROOT


def test_soak_30_seconds(tmp_path):
    report_path = tmp_path / "soak.json"
    done = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "python"),
            "-m",
            "bench.soak",
            "--duration",
            "30",
            "--concurrency",
            "32",
            "--json",
            str(report_path),
        ],
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(done.stdout)
    report = json.loads(report_path.read_text())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert report["errors"] == 0, report["error_kinds"]
    assert report["requests"] > 300
    assert len(report["samples"]) >= 5 and report["same_workers"]
    assert all(mb > 50 for mb in report["rss_last_mb"].values())  # real TF workers measured
    assert "growth" in done.stdout and "worker RSS" in done.stdout
