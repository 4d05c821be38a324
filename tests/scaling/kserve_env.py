"""KServe's own Python packages for the KServe test, in a virtual environment of their own.

kserve 0.21.0 cannot be installed beside the project's pins (it requires protobuf < 7;
pyproject.toml pins protobuf==7.36.2 for grpcio-health-checking), so the fixture creates
``.venv/kserve-0.21.0`` (or $LAYERSCOPE_KSERVE_VENV) from PyPI once, with the pinned
``kserve`` (InferenceRESTClient) and ``kserve-storage`` (the storage initializer's code),
and runs them there as separate processes."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PINS = ["kserve==0.21.0", "kserve-storage==0.21.0"]


def venv_dir() -> Path:
    return Path(os.environ.get("LAYERSCOPE_KSERVE_VENV") or ROOT / ".venv" / "kserve-0.21.0")


def python() -> str:
    """The environment's python, created (under a lock) when missing."""
    venv = venv_dir()
    py = venv / "bin" / "python"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if py.exists() and _works(py):
            return str(py)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             *PINS],
            check=True,
            timeout=900,
        )
        assert _works(py), f"{venv}: kserve / kserve_storage do not import"
    return str(py)


def _works(py: Path) -> bool:
    check = subprocess.run(
        [str(py), "-c", "import kserve, kserve_storage"], capture_output=True, timeout=120
    )
    return check.returncode == 0


DOWNLOAD = """
import sys
from kserve_storage import Storage
print(Storage.download(sys.argv[1], sys.argv[2]))
"""

INFER = """
import asyncio, json, sys
import numpy as np
from kserve import InferenceRESTClient, RESTConfig, InferRequest, InferInput

async def main(url, name, input_name, rows):
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    out = {"server_live": await client.is_server_live(url),
           "server_ready": await client.is_server_ready(url),
           "model_ready": await client.is_model_ready(url, name)}
    x = np.asarray(rows, dtype=np.float32)
    tensor = InferInput(name=input_name, shape=list(x.shape), datatype="FP32")
    tensor.set_data_from_numpy(x, binary_data=False)
    request = InferRequest(model_name=name, infer_inputs=[tensor], request_id="kserve-test")
    answer = await client.infer(url, request, model_name=name)
    out["model_name"] = answer.model_name
    out["model_version"] = answer.model_version
    out["id"] = answer.id
    out["outputs"] = {o.name: o.as_numpy().tolist() for o in answer.outputs}
    print(json.dumps(out))

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.stdin.read())))
"""


def run(code: str, *args: str, env: dict | None = None, stdin: str | None = None,
        timeout: float = 300) -> str:
    out = subprocess.run(
        [python(), "-c", code, *args],
        env={**os.environ, **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out.stdout
