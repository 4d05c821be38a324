"""A model repository on object storage (docs/scaling.md).

``LAYERSCOPE_MODEL_REPOSITORY=s3://bucket/prefix`` keeps the repository contract of
docs/DESIGN.md, one object per file: ``<prefix>/<name>/<version>/metadata.json`` ...,
``<prefix>/<name>/serving.yaml`` and the admin decisions ``<prefix>/.admin-state.json``.
Credentials and endpoint come from the AWS SDK's standard variables (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``).

The server is unchanged beyond one hook: before each scan, ``Syncer.sync`` mirrors the
store into a local cache folder (``LAYERSCOPE_REPOSITORY_CACHE_DIR``), which
``ModelRepository`` then scans as a local repository. Per version, atomically: its files
are downloaded into a hidden temporary folder, every checksum that ``metadata.json``'s
``files`` records is verified, and only then is the folder renamed into place. A version
is complete only when its ``metadata.json`` (uploaded last) is there and every file it
lists is present with its recorded size and sha256, so a half-uploaded version never
reaches the scan; a prefix holding nothing but ``model.keras`` is a bare version (an S3
object appears whole or not at all). Versions deleted from the store are deleted from the
cache (and so unloaded). When the store cannot be reached, nothing in the cache changes:
the server keeps serving what it has, and the fault is logged, counted
(``layerscope_repository_reachable``, ``_sync_errors``) and shown in ``GET /models``.

Several Gunicorn workers share one cache: a sync runs under an ``flock``, and a worker that
finds a sync younger than half the poll interval reuses its result (``.sync-status.json``)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("layerscope.storage")

SCHEME = "s3://"
METADATA = "metadata.json"
MODEL = "model.keras"
SERVING_FILE = "serving.yaml"
ADMIN_STATE = ".admin-state.json"
STATUS_FILE = ".sync-status.json"
MANIFEST_FILE = ".sync-manifest.json"
LOCK_FILE = ".sync.lock"
STAGING = ".sync-"
LOG_EVERY = 60.0  # s between repeated log lines of the same fault


def is_remote(url: object) -> bool:
    return str(url).startswith(SCHEME)


def parse_url(url: str) -> tuple[str, str]:
    """``s3://bucket/a/b/`` -> ("bucket", "a/b")."""
    if not is_remote(url):
        raise ValueError(f"expected an s3://bucket/prefix URL. Received: {url!r}")
    bucket, _, prefix = url[len(SCHEME) :].partition("/")
    if not bucket:
        raise ValueError(f"the URL names no bucket. Received: {url!r}")
    return bucket, prefix.strip("/")


def default_cache_dir(url: str) -> Path:
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"layerscope-repository-{digest}"


def client():
    """A boto3 S3 client from the AWS SDK's standard environment, with short timeouts and
    few retries: an unreachable store is reported within seconds, not minutes."""
    import boto3
    from botocore.config import Config

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    # S3-compatible servers (MinIO, Ceph, rclone) behind AWS_ENDPOINT_URL want paths
    style = "path" if os.environ.get("AWS_ENDPOINT_URL") else "auto"
    config = Config(
        connect_timeout=3,
        read_timeout=30,
        retries={"max_attempts": 2, "mode": "standard"},
        s3={"addressing_style": os.environ.get("AWS_S3_ADDRESSING_STYLE", style)},
    )
    return boto3.session.Session().client("s3", region_name=region, config=config)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Obj:
    key: str  # relative to the prefix
    etag: str
    size: int


class ObjectStore:
    """The bucket and prefix of an ``s3://`` repository, keys relative to the prefix."""

    def __init__(self, url: str, s3=None):
        self.url = url.rstrip("/")
        self.bucket, self.prefix = parse_url(url)
        self._s3 = s3
        self._lock = threading.Lock()

    @property
    def s3(self):
        with self._lock:
            if self._s3 is None:
                self._s3 = client()
            return self._s3

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def list(self, under: str = "") -> dict[str, Obj]:
        base = self.key(under) if under else self.prefix
        base = f"{base}/" if base else ""
        found: dict[str, Obj] = {}
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base)
        strip = len(f"{self.prefix}/") if self.prefix else 0
        for page in pages:
            for item in page.get("Contents") or ():
                rel = item["Key"][strip:]
                found[rel] = Obj(rel, str(item.get("ETag", "")).strip('"'), int(item["Size"]))
        return found

    def get_bytes(self, rel: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            return self.s3.get_object(Bucket=self.bucket, Key=self.key(rel))["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise

    def put_bytes(self, rel: str, data: bytes) -> str:
        answer = self.s3.put_object(Bucket=self.bucket, Key=self.key(rel), Body=data)
        return str(answer.get("ETag", "")).strip('"')

    def download(self, rel: str, path: Path) -> None:
        self.s3.download_file(self.bucket, self.key(rel), str(path))

    def upload(self, path: Path, rel: str) -> None:
        self.s3.upload_file(str(path), self.bucket, self.key(rel))


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class Incomplete(Exception):
    """A remote version that is not (yet) whole: skipped, tried again next sync."""


class Syncer:
    """Mirrors an ``ObjectStore`` into ``cache`` (see the module docstring)."""

    def __init__(self, store: ObjectStore, cache: Path, min_interval: float = 0.0):
        from service.repository import NAME_RE, VERSION_RE

        self.store, self.cache = store, Path(cache)
        self.min_interval = min_interval
        self._name_re, self._version_re = NAME_RE, VERSION_RE
        self._logged: dict[str, float] = {}  # fault text -> when it was last logged

    # -- the shared status (every worker of a host reads it) --------------------------------
    def status(self) -> dict[str, Any]:
        status = _read_json(self.cache / STATUS_FILE)
        return {
            "source": self.store.url,
            "cache": str(self.cache),
            "reachable": status.get("reachable"),
            "error": status.get("error"),
            "last_sync": status.get("last_sync"),
            "last_attempt": status.get("last_attempt"),
            "versions": status.get("versions"),
            "incomplete": status.get("incomplete", []),
            "rejected": status.get("rejected", {}),
        }

    def _log_once(self, level: int, text: str) -> None:
        now = time.monotonic()
        if now - self._logged.get(text, -LOG_EVERY) >= LOG_EVERY:
            self._logged[text] = now
            log.log(level, "%s", text)

    # -- one sync ---------------------------------------------------------------------------
    def sync(self, force: bool = False) -> dict[str, Any]:
        """Bring the cache in line with the store; never raises for a store fault."""
        self.cache.mkdir(parents=True, exist_ok=True)
        with open(self.cache / LOCK_FILE, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            previous = _read_json(self.cache / STATUS_FILE)
            last = previous.get("last_attempt")
            if not force and last and time.time() - float(last) < self.min_interval:
                self._publish_metrics(previous, counted=False)
                return previous
            status = dict(previous)
            status["last_attempt"] = time.time()
            try:
                status.update(self._sync())
                status.update(reachable=True, error=None, last_sync=time.time())
                if previous.get("reachable") is False:
                    log.warning("model repository %s reachable again", self.store.url)
                    self._logged.clear()
            except Exception as exc:  # any store fault: keep the cache, report it
                status.update(reachable=False, error=f"{type(exc).__name__}: {exc}"[:500])
                self._log_once(
                    logging.ERROR,
                    f"model repository {self.store.url} unreachable, serving the cached "
                    f"versions: {status['error']}",
                )
            _write_atomic(self.cache / STATUS_FILE, json.dumps(status).encode())
            self._publish_metrics(status, counted=True)
            return status

    def _publish_metrics(self, status: dict, counted: bool) -> None:
        from service import metrics

        metrics.repository_synced(
            bool(status.get("reachable")),
            status.get("last_sync"),
            status.get("error") if counted else None,
        )

    def _sync(self) -> dict[str, Any]:
        objects = self.store.list()
        manifest = _read_json(self.cache / MANIFEST_FILE)
        remote: dict[tuple[str, int], dict[str, Obj]] = {}
        specs: dict[str, Obj] = {}
        admin: Obj | None = None
        for rel, obj in objects.items():
            parts = rel.split("/")
            if rel == ADMIN_STATE:
                admin = obj
            elif len(parts) == 2 and parts[1] == SERVING_FILE and self._name_re.match(parts[0]):
                specs[parts[0]] = obj
            elif (
                len(parts) >= 3
                and self._name_re.match(parts[0])
                and self._version_re.match(parts[1])
                and ".." not in parts
            ):
                remote.setdefault((parts[0], int(parts[1])), {})["/".join(parts[2:])] = obj
        incomplete, rejected = [], {}
        kept: set[tuple[str, int]] = set()
        for (name, version), files in sorted(remote.items()):
            ident = f"{name}/{version}"
            meta, model = files.get(METADATA), files.get(MODEL)
            if meta is not None:
                sig = f"published:{meta.etag}"
            elif model is not None and set(files) == {MODEL}:
                sig = f"bare:{model.etag}"
            else:  # pipeline files without metadata.json: still being uploaded
                incomplete.append(ident)
                if (self.cache / name / str(version)).is_dir():
                    kept.add((name, version))  # a rewrite in progress: keep serving the old
                continue
            target = self.cache / name / str(version)
            if manifest.get(ident) == sig and target.is_dir():
                kept.add((name, version))
                continue
            try:
                self._fetch_version(name, version, files, sig, target)
            except Incomplete as exc:
                reason = str(exc)
                incomplete.append(ident)
                if meta is not None and "checksum" in reason:
                    rejected[ident] = reason
                self._log_once(logging.WARNING, f"model {name} version {version}: {reason}")
                if target.is_dir():
                    kept.add((name, version))
                continue
            manifest[ident] = sig
            kept.add((name, version))
            log.info("model %s version %s downloaded from %s", name, version, self.store.url)
        self._remove_absent(kept, manifest)
        for name in {n for n, _ in kept} | set(specs) | self._local_names():
            self._mirror(specs.get(name), Path(name) / SERVING_FILE, manifest)
        self._mirror(admin, Path(ADMIN_STATE), manifest)
        _write_atomic(self.cache / MANIFEST_FILE, json.dumps(manifest, sort_keys=True).encode())
        return {"versions": len(kept), "incomplete": incomplete, "rejected": rejected}

    def _local_names(self) -> set[str]:
        try:
            return {p.name for p in self.cache.iterdir() if self._name_re.match(p.name)}
        except OSError:
            return set()

    def _fetch_version(
        self, name: str, version: int, files: dict[str, Obj], sig: str, target: Path
    ) -> None:
        """Download, verify, rename into place (Incomplete when not whole yet)."""
        folder = self.cache / name
        folder.mkdir(parents=True, exist_ok=True)
        staging = folder / f"{STAGING}{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            prefix = f"{name}/{version}/"
            if sig.startswith("bare:"):
                self.store.download(prefix + MODEL, staging / MODEL)
            else:
                self.store.download(prefix + METADATA, staging / METADATA)
                recorded = _read_json(staging / METADATA).get("files")
                if not isinstance(recorded, dict) or MODEL not in recorded:
                    raise Incomplete("metadata.json lists no files (expected model.keras)")
                for rel, want in sorted(recorded.items()):
                    parts = rel.split("/")
                    if ".." in parts or rel.startswith("/") or not isinstance(want, dict):
                        raise Incomplete(f"metadata.json lists an invalid file {rel!r}")
                    obj = files.get(rel)
                    if obj is None:
                        raise Incomplete(f"{rel} listed in metadata.json is not uploaded yet")
                    if want.get("bytes") is not None and obj.size != want.get("bytes"):
                        raise Incomplete(
                            f"{rel} has {obj.size} bytes, metadata.json records "
                            f"{want.get('bytes')} (upload in progress or stale)"
                        )
                    dest = staging / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    self.store.download(prefix + rel, dest)
                    got = sha256_file(dest)
                    if got != want.get("sha256"):
                        raise Incomplete(
                            f"{rel}: checksum sha256 {got} differs from metadata.json's "
                            f"{want.get('sha256')}"
                        )
            old = None
            if target.exists():
                old = folder / f"{STAGING}old-{uuid.uuid4().hex}"
                os.rename(target, old)
            os.rename(staging, target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def _remove_absent(self, kept: set[tuple[str, int]], manifest: dict) -> None:
        for name in self._local_names():
            folder = self.cache / name
            for child in list(folder.iterdir()):
                if child.name.startswith(STAGING):  # left by a killed sync
                    shutil.rmtree(child, ignore_errors=True)
                elif self._version_re.match(child.name) and (name, int(child.name)) not in kept:
                    shutil.rmtree(child, ignore_errors=True)
                    manifest.pop(f"{name}/{child.name}", None)
                    log.info(
                        "model %s version %s deleted from %s", name, child.name, self.store.url
                    )

    def _mirror(self, obj: Obj | None, rel: Path, manifest: dict) -> None:
        """A small file (serving.yaml, the admin state): copied when its ETag changes."""
        local = self.cache / rel
        ident = rel.as_posix()
        if obj is None:
            if local.exists():
                local.unlink()
            manifest.pop(ident, None)
            return
        if manifest.get(ident) == obj.etag and local.exists():
            return
        data = self.store.get_bytes(rel.as_posix())
        if data is None:
            return
        local.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(local, data)
        manifest[ident] = obj.etag

    # -- the admin state (service/api/admin.py) ----------------------------------------------
    def prefetch_state(self) -> None:
        """Mirror only the admin state, before the app's watcher first reads it (a new
        replica starts with the others' pin, not after its first full sync)."""
        try:
            data = self.store.get_bytes(ADMIN_STATE)
        except Exception as exc:  # reported by the first sync
            log.debug("admin state not prefetched: %s", exc)
            return
        self.cache.mkdir(parents=True, exist_ok=True)
        with open(self.cache / LOCK_FILE, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if data is None:
                with contextlib.suppress(OSError):
                    (self.cache / ADMIN_STATE).unlink()
            else:
                _write_atomic(self.cache / ADMIN_STATE, data)

    def read_state(self) -> dict | None:
        data = self.store.get_bytes(ADMIN_STATE)
        if data is None:
            return None
        with contextlib.suppress(ValueError):
            decoded = json.loads(data)
            if isinstance(decoded, dict):
                return decoded
        return None

    def write_state(self, data: bytes) -> None:
        """Upload the state, then mirror it locally at once (this replica applies it now;
        the others at their next sync)."""
        etag = self.store.put_bytes(ADMIN_STATE, data)
        with open(self.cache / LOCK_FILE, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            _write_atomic(self.cache / ADMIN_STATE, data)
            manifest = _read_json(self.cache / MANIFEST_FILE)
            manifest[ADMIN_STATE] = etag
            _write_atomic(self.cache / MANIFEST_FILE, json.dumps(manifest).encode())


# -- wiring into the app (service/__init__.py) ---------------------------------------------
def init_app(app) -> None:
    """With an ``s3://`` repository: sync before every scan, and show the store's state as
    ``"repository"`` in ``GET /models``."""
    state = app.extensions["layerscope"]
    settings = state.settings
    if not settings.repository_url:
        return
    store = ObjectStore(settings.repository_url)
    syncer = Syncer(store, Path(settings.model_repository), settings.poll_interval / 2)
    state.repository.before_scan = syncer.sync
    syncer.prefetch_state()
    app.extensions["layerscope_store"] = syncer

    @app.after_request
    def _repository_status(response):
        from flask import request

        if request.endpoint == "native.list_models" and response.status_code == 200:
            body = response.get_json(silent=True)
            if isinstance(body, dict):
                body["repository"] = syncer.status()
                response.set_data(json.dumps(body))
        return response


# -- publishing (training/publish.py) ------------------------------------------------------
def next_version(store: ObjectStore, name: str) -> int:
    taken = set()
    for rel in store.list(name):
        parts = rel.split("/")
        if len(parts) >= 3 and parts[1].isdigit():
            taken.add(int(parts[1]))
    return max(taken, default=0) + 1


def upload_version(folder: Path, url: str, name: str) -> str:
    """Upload a complete local version folder as the next version of ``name`` under the
    ``s3://`` repository ``url``: every file, ``model.keras`` after the others and
    ``metadata.json`` (renumbered) last. Returns the version's URL."""
    store = ObjectStore(url)
    version = next_version(store, name)
    meta = json.loads((folder / METADATA).read_text())
    meta["version"] = version
    files = sorted(
        (p for p in folder.rglob("*") if p.is_file() and p.name != METADATA),
        key=lambda p: (p.name == MODEL, p.as_posix()),
    )
    prefix = f"{name}/{version}/"
    if store.list(prefix.rstrip("/")):
        raise RuntimeError(f"{url}/{prefix} appeared while publishing; publish again")
    for path in files:
        store.upload(path, prefix + path.relative_to(folder).as_posix())
    store.put_bytes(prefix + METADATA, (json.dumps(meta, indent=2) + "\n").encode())
    return f"{store.url}/{prefix.rstrip('/')}"
