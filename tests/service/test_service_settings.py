"""Settings from LAYERSCOPE_* variables and the Gunicorn configuration built from them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings, cpu_count, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_defaults(monkeypatch):
    for key in list(os.environ):
        if key.startswith("LAYERSCOPE_"):
            monkeypatch.delenv(key)
    s = Settings()
    assert (s.host, s.port, s.model_repository) == ("127.0.0.1", 8000, Path("models"))
    assert s.workers == min(cpu_count(), 8)
    assert s.intra_op_threads == max(1, cpu_count() // s.workers)


def test_environment_and_overrides(monkeypatch):
    monkeypatch.setenv("LAYERSCOPE_PORT", "9123")
    monkeypatch.setenv("LAYERSCOPE_WORKERS", "3")
    monkeypatch.setenv("LAYERSCOPE_MODEL_REPOSITORY", "/srv/models")
    monkeypatch.setenv("LAYERSCOPE_POLL_INTERVAL", "0")
    s = load_settings({"max_batch_size": 5})
    assert (s.port, s.workers, s.model_repository) == (9123, 3, Path("/srv/models"))
    assert s.poll_interval == 0 and s.max_batch_size == 5


@pytest.mark.parametrize("key,value", [("PORT", "0"), ("PORT", "http"), ("WORKERS", "0")])
def test_invalid_environment_rejected(monkeypatch, key, value):
    monkeypatch.setenv(f"LAYERSCOPE_{key}", value)
    with pytest.raises(ValidationError):
        Settings()


def test_gunicorn_conf_never_imports_tensorflow():
    """The master evaluates gunicorn_conf.py and imports the worker class; TF must only
    ever load in the workers."""
    code = (
        "import json, runpy, sys; c = runpy.run_path('service/gunicorn_conf.py'); "
        "from gunicorn.util import load_class; load_class(c['worker_class']); "
        "print(json.dumps({'tf': 'tensorflow' in sys.modules, 'keras': 'keras' in sys.modules, "
        "'bind': c['bind'], 'workers': c['workers'], 'preload': c['preload_app'], "
        "'worker_class': c['worker_class'], 'env': c['raw_env']}))"
    )
    env = {**os.environ, "LAYERSCOPE_PORT": "8765", "LAYERSCOPE_WORKERS": "2"}
    env.pop("TF_NUM_INTRAOP_THREADS", None)
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    conf = json.loads(out.stdout.strip().splitlines()[-1])
    assert conf["tf"] is False and conf["keras"] is False
    assert conf["bind"] == "127.0.0.1:8765" and conf["workers"] == 2
    assert conf["preload"] is False
    assert conf["worker_class"] == "service.workers.BufferingThreadWorker"
    intra = max(1, cpu_count() // 2)
    assert f"TF_NUM_INTRAOP_THREADS={intra}" in conf["env"]
