"""Admin API: reload the repository, load / unload a version, pin the default version.

Only registered when ``LAYERSCOPE_ADMIN_TOKEN`` is set (otherwise every ``/admin`` path is
a 404); every call needs ``Authorization: Bearer <token>`` (401 without, 403 wrong).

Every Gunicorn worker owns its own repository, so a decision is not applied to one
worker's memory: it is written (under an ``flock``, atomically by rename) to a small
state file, ``LAYERSCOPE_ADMIN_STATE_FILE`` (default ``<model_repository>/.admin-state.json``,
a name the repository scan ignores). The answering worker applies it before replying;
every other worker's watcher thread applies it within ``WATCH_INTERVAL`` seconds, and a
worker started later (a restart after a crash) applies it before its first load. The file
persists across restarts, like a model config file; delete it to return to the defaults
(serve the newest versions).

Replicas (docs/scaling.md): with an ``s3://`` repository the state is the object
``<prefix>/.admin-state.json`` in the store, so every replica shares it. A change is
read, edited and uploaded there (under the local ``flock``; two replicas changing the
state in the same instant: the last upload wins), then mirrored into the local cache at
once; every other replica's sync mirrors it within one poll interval and its watcher
applies it as above. A local repository (one host, or a shared volume) keeps the file.

State file: ``{"generation": n, "models": {name: {"default": v | null, "unloaded": [v],
"loaded": [v]}}, "retry": {name: [v]}}``; ``retry`` lists failed versions a ``load`` asked
to try again (once per generation)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
from pathlib import Path

from flask import Blueprint, Flask, jsonify, request

from service.api import repository
from service.errors import InvalidInput, LayerscopeError, ModelNotFound
from service.repository import FAILED, NAME_RE, READY
from service.security import admin_token, check_bearer

log = logging.getLogger("layerscope.admin")
bp = Blueprint("admin", __name__, url_prefix="/admin")
WATCH_INTERVAL = 0.5
STATE_NAME = ".admin-state.json"


class Conflict(LayerscopeError):
    status = 409


def state_path(cfg) -> Path:
    return Path(cfg.admin_state_file or Path(cfg.model_repository) / STATE_NAME)


def read_state(path: Path) -> dict:
    """The decoded state file; an absent or unreadable file means no decisions."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"generation": 0, "models": {}, "retry": {}}
    if not isinstance(data, dict):
        return {"generation": 0, "models": {}, "retry": {}}
    data.setdefault("generation", 0)
    data.setdefault("models", {})
    data.setdefault("retry", {})
    return data


class Watcher:
    """Applies the state file to one worker's repository whenever the file changes."""

    def __init__(self, repo, path: Path):
        self.repo, self.path = repo, path
        self.seen: tuple | None = None
        self.remote = None  # service.storage.Syncer when the state lives in an s3:// store
        self.generation: int | None = None
        self._lock = threading.Lock()
        self.stop = threading.Event()

    def _stamp(self) -> tuple | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def apply(self, refresh: bool = True) -> None:
        """Copy the decisions into the repository and bring its table in line."""
        with self._lock:
            self.seen = self._stamp()
            data = read_state(self.path)
            models = {
                str(n): r for n, r in (data.get("models") or {}).items() if isinstance(r, dict)
            }
            self.repo.overrides = models
            if data.get("generation") != self.generation:
                self.generation = data.get("generation")
                self.repo.retry = {
                    (str(n), int(v))
                    for n, vs in (data.get("retry") or {}).items()
                    for v in (vs or [])
                    if isinstance(v, int)
                }
        if refresh:
            self.repo.refresh()

    def run(self) -> None:
        while not self.stop.wait(WATCH_INTERVAL):
            if self._stamp() != self.seen:
                try:
                    self.apply()
                except Exception:  # keep watching; the next change may apply
                    log.exception("applying the admin state file failed")

    def start(self) -> None:
        threading.Thread(target=self.run, name="layerscope-admin", daemon=True).start()


@contextlib.contextmanager
def _locked_state(path: Path, remote=None):
    """Read-modify-write of the state file under an exclusive flock (workers race); with
    ``remote`` (an s3:// repository's syncer) the state read and written is the store's."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_name(path.name + ".lock"), "a+")  # noqa: SIM115
    except OSError as exc:
        raise LayerscopeError(
            f"cannot write the admin state file {path}: {exc.strerror}; set "
            "LAYERSCOPE_ADMIN_STATE_FILE to a writable path",
            503,
        ) from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = read_state(path) if remote is None else _read_remote(remote)
        yield data
        data["generation"] = int(data.get("generation") or 0) + 1
        if remote is not None:
            _write_remote(remote, data)
            return
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise LayerscopeError(
                f"cannot write the admin state file {path}: {exc.strerror}", 503
            ) from None


def _read_remote(remote) -> dict:
    try:
        data = remote.read_state()
    except Exception as exc:  # the store is unreachable: refuse rather than guess
        raise LayerscopeError(
            f"cannot read the admin state from {remote.store.url}: {exc}", 503
        ) from None
    data = data if isinstance(data, dict) else {}
    data.setdefault("generation", 0)
    data.setdefault("models", {})
    data.setdefault("retry", {})
    return data


def _write_remote(remote, data: dict) -> None:
    try:
        remote.write_state(json.dumps(data, indent=1, sort_keys=True).encode())
    except Exception as exc:
        raise LayerscopeError(
            f"cannot write the admin state to {remote.store.url}: {exc}", 503
        ) from None


def _watcher() -> Watcher:
    from flask import current_app

    return current_app.extensions["layerscope_admin"]


def _published(name: str) -> dict[int, Path]:
    """The versions of ``name`` on disk (validated name, inside the repository)."""
    if not NAME_RE.match(name):
        raise ModelNotFound(f"model name {name[:80]!r} is invalid; expected {NAME_RE.pattern}")
    found = repository().scan()
    if name not in found:
        known = ", ".join(sorted(found)) or "none"
        raise ModelNotFound(f"model {name!r} not found; available models: {known}")
    return found[name]


def _check_version(name: str, version: int) -> None:
    versions = _published(name)
    if version not in versions:
        raise ModelNotFound(
            f"model {name!r} has no published version {version}; published versions: "
            f"{', '.join(str(v) for v in sorted(versions))}"
        )


def _change(name: str | None, edit) -> dict:
    """Apply ``edit(rule, data)`` to the state file, then to this worker; report."""
    watcher = _watcher()
    with _locked_state(watcher.path, watcher.remote) as data:
        data["retry"] = {}
        if name is not None:
            rule = data["models"].setdefault(name, {"default": None, "unloaded": [], "loaded": []})
            edit(rule, data)
    watcher.apply()
    return _report(name)


def _report(name: str | None) -> dict:
    repo = repository()
    table = repo.models()
    names = [name] if name is not None else sorted(table)
    models = {}
    for n in names:
        versions = table.get(n, {})
        models[n] = {
            "default_version": repo.default_version(n) if versions else None,
            "rule": repo.overrides.get(n) or {"default": None, "unloaded": [], "loaded": []},
            "versions": [versions[v].describe() for v in sorted(versions)],
        }
    return {
        "pid": os.getpid(),
        "generation": _watcher().generation,
        "applied_in_other_workers_within_seconds": WATCH_INTERVAL + 0.5,
        "models": models,
    }


@bp.before_request
def _authenticate() -> None:
    token = admin_token()
    if token is None:  # the token was removed from a live app's settings
        raise ModelNotFound("no such endpoint: the admin API is off")
    check_bearer(token, "the admin API")


@bp.get("/state")
def state():
    body = _report(None)
    body["state_file"] = read_state(_watcher().path)
    return jsonify(body)


@bp.post("/reload")
def reload():
    """Rescan the repository now, in every worker (also retries failed versions)."""
    table = repository().models()
    failed = {n: [v for v, s in vs.items() if s.status == FAILED] for n, vs in table.items()}
    watcher = _watcher()
    with _locked_state(watcher.path, watcher.remote) as data:
        data["retry"] = {n: vs for n, vs in failed.items() if vs}
    watcher.apply()
    return jsonify(_report(None))


@bp.post("/models/<name>/versions/<int:version>/load")
def load(name: str, version: int):
    """Serve ``version`` even outside the newest LAYERSCOPE_MAX_VERSIONS; retry if failed."""
    _check_version(name, version)

    def edit(rule, data):
        rule["unloaded"] = [v for v in rule.get("unloaded", []) if v != version]
        rule["loaded"] = sorted({*rule.get("loaded", []), version})
        data["retry"] = {name: [version]}

    body = _change(name, edit)
    st = repository().models().get(name, {}).get(version)
    if st is not None and st.status != READY:
        body["error"] = f"version {version} is {st.status}: {st.reason}"
        return jsonify(body), 409
    return jsonify(body)


@bp.post("/models/<name>/versions/<int:version>/unload")
def unload(name: str, version: int):
    """Stop serving ``version`` in every worker (it stays on disk)."""
    _check_version(name, version)

    def edit(rule, _data):
        if rule.get("default") == version:
            raise Conflict(
                f"version {version} is the pinned default of {name!r}; pin another version "
                f"(PUT /admin/models/{name}/default) or DELETE the pin first"
            )
        rule["loaded"] = [v for v in rule.get("loaded", []) if v != version]
        rule["unloaded"] = sorted({*rule.get("unloaded", []), version})

    return jsonify(_change(name, edit))


@bp.put("/models/<name>/default")
def set_default(name: str):
    """Pin the version unversioned requests get: body ``{"version": 3}``."""
    body = request.get_json(silent=True)
    version = body.get("version") if isinstance(body, dict) else None
    if isinstance(version, bool) or not isinstance(version, int):
        raise InvalidInput(
            f'expected a JSON body {{"version": <int>}}; got {request.get_data()[:80]!r}'
        )
    _check_version(name, version)

    def edit(rule, data):
        if version in rule.get("unloaded", []):
            raise Conflict(
                f"version {version} of {name!r} was unloaded; POST "
                f"/admin/models/{name}/versions/{version}/load first"
            )
        rule["default"] = version
        data["retry"] = {name: [version]}

    report = _change(name, edit)
    if repository().default_version(name) != version:
        st = repository().models().get(name, {}).get(version)
        report["error"] = (
            f"version {version} is pinned but not served: it is "
            f"{getattr(st, 'status', 'unknown')} ({getattr(st, 'reason', None)})"
        )
        return jsonify(report), 409
    return jsonify(report)


@bp.delete("/models/<name>/default")
def clear_default(name: str):
    """Back to the default policy: the newest ready version."""
    _published(name)

    def edit(rule, _data):
        rule["default"] = None

    return jsonify(_change(name, edit))


def init_app(app: Flask) -> None:
    """Register the blueprint and the state-file watcher, only when a token is set."""
    cfg = app.extensions["layerscope"].settings
    if cfg.admin_token is None or not cfg.admin_token.get_secret_value():
        return
    watcher = Watcher(app.extensions["layerscope"].repository, state_path(cfg))
    if cfg.admin_state_file is None:  # an s3:// repository: the state is the store's
        watcher.remote = app.extensions.get("layerscope_store")
    watcher.apply(refresh=False)  # before the first load: a restarted worker agrees
    app.extensions["layerscope_admin"] = watcher
    app.register_blueprint(bp)
    watcher.start()
