"""Fixtures of the scaling tests (docs/scaling.md): a real S3 server (rclone), tiny
models published into it the way the pipeline does, and real Gunicorn servers reading it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from s3server import RcloneS3  # noqa: E402


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("s3")
    server = RcloneS3(tmp / "data", tmp / "rclone.log").start()
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())  # boto3 in this process (publishing) finds it too
    yield server
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
