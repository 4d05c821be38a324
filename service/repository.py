"""Model repository: discovery of ``<root>/<name>/<int version>/``, checksum-verified
loading, per-version status and hot reload.

Each Gunicorn worker owns one ``ModelRepository`` (created inside ``create_app``, which
runs after fork) and one background thread that loads the initial models and then polls.
Readers never lock: the table of versions is rebuilt and swapped as a whole when folders
appear or vanish, and an entry only ever changes by one assignment (loading -> ready or
failed, ready -> skipped), so a request sees a consistent table. A version that fails its
checksum or its load is recorded as ``failed`` with the reason; the previous version keeps
serving. A version whose folder disappears is unloaded."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service import gc_freeze, model_file
from service.errors import ModelNotFound, ModelNotReady
from service.runtime import LoadError, ModelRuntime, bare_metadata, read_metadata

log = logging.getLogger("layerscope.repository")

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
VERSION_RE = re.compile(r"^[1-9][0-9]{0,8}$")

LOADING, READY, FAILED, SKIPPED = "loading", "ready", "failed", "skipped"


@dataclass
class VersionState:
    name: str
    version: int
    path: Path
    signature: tuple
    status: str = LOADING
    reason: str | None = None
    runtime: Any = None
    loaded_at: float | None = None
    load_seconds: float | None = None

    @property
    def bare(self) -> bool:
        return not (self.path / "metadata.json").is_file()

    def describe(self) -> dict[str, Any]:
        runtime = self.runtime
        checksum = None
        if runtime is not None:
            checksum = "verified" if runtime.verified else "unverified"
        return {
            "version": self.version,
            "status": self.status,
            "reason": self.reason,
            "source": "bare" if self.bare else "published",
            "checksum": checksum,
            "loaded_at": self.loaded_at,
            "load_seconds": None if self.load_seconds is None else round(self.load_seconds, 3),
        }


@dataclass
class Event:
    """What listeners (logs, metrics) receive: kind in loaded / failed / unloaded."""

    kind: str
    name: str
    version: int
    reason: str | None = None
    seconds: float | None = None
    extra: dict = field(default_factory=dict)


def _signature(path: Path) -> tuple:
    """Changes when a version folder is rewritten in place, or its model's serving.yaml
    changes, so it gets reloaded."""
    stats = []
    for file in (path / "metadata.json", path / "model.keras", path.parent / model_file.FILE_NAME):
        try:
            st = file.stat()
            stats.append((st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            stats.append(None)
    return tuple(stats)


# What the pipeline writes beside model.keras: a folder holding one of these but no
# metadata.json (written last) is a published version still being written, or broken.
PUBLISHED_ONLY = ("history.json", "plots")


def _bare(vdir: Path) -> bool:
    """A bare version: a model.keras dropped in by hand, no pipeline files beside it."""
    return (vdir / "model.keras").is_file() and not any(
        (vdir / name).exists() for name in PUBLISHED_ONLY
    )


class ModelRepository:
    def __init__(
        self,
        root: Path | str,
        poll_interval: float = 5.0,
        runtime_factory: Callable[..., Any] = ModelRuntime,
        max_versions: int = 0,
        single_model: str | None = None,
    ):
        self.root = Path(root)
        # KServe's layout (docs/scaling.md): ``root`` (/mnt/models) holds the version
        # folders of ONE model, served under this name (LAYERSCOPE_MODEL_NAME)
        self.single_model = single_model
        # called before every scan of a refresh: an s3:// repository's sync into ``root``
        # (service/storage.py)
        self.before_scan: Callable[[], Any] | None = None
        self.poll_interval = poll_interval
        self.max_versions = max_versions  # 0 = load every version
        self.runtime_factory = runtime_factory
        self.listeners: list[Callable[[Event], None]] = []
        self._versions: dict[str, dict[int, VersionState]] = {}  # swapped, never mutated
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.initial_load_done = threading.Event()
        self.last_scan: float | None = None
        # Admin decisions (service/api/admin.py) per model: {"default": int | None,
        # "unloaded": [int], "loaded": [int]}; ``retry``: failed versions to load again.
        self.overrides: dict[str, dict] = {}
        self.retry: set[tuple[str, int]] = set()
        self._changed = False  # a version loaded, failed or unloaded since the last settle

    # -- discovery ---------------------------------------------------------------------
    def _inside_root(self, path: Path) -> bool:
        """Refuse anything (e.g. a symlink) that resolves outside the repository."""
        try:
            path.resolve(strict=True).relative_to(self.root.resolve(strict=True))
            return True
        except (OSError, ValueError):
            return False

    def scan(self) -> dict[str, dict[int, Path]]:
        """Every ``<name>/<version>/`` holding a metadata.json (published) or only a
        model.keras (bare); everything else ignored."""
        found: dict[str, dict[int, Path]] = {}
        if self.single_model is not None:  # KServe: the root is the model's folder
            model_dirs = [(self.single_model, self.root)]
        else:
            try:
                model_dirs = [(p.name, p) for p in sorted(self.root.iterdir())]
            except OSError:
                return found
        for model_name, model_dir in model_dirs:
            if not NAME_RE.match(model_name) or not model_dir.is_dir():
                continue
            if self.single_model is None and not self._inside_root(model_dir):
                log.warning("ignoring %s: resolves outside the repository", model_dir)
                continue
            versions: dict[int, Path] = {}
            try:
                entries = list(model_dir.iterdir())
            except OSError:
                continue
            for vdir in entries:
                if not VERSION_RE.match(vdir.name) or not vdir.is_dir():
                    continue
                if not self._inside_root(vdir):
                    continue
                if not (vdir / "metadata.json").is_file() and not _bare(vdir):
                    continue
                versions[int(vdir.name)] = vdir
            if versions:
                found[model_name] = versions
        return found

    # -- loading -----------------------------------------------------------------------
    def _emit(self, event: Event) -> None:
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:  # a broken listener must not stop reloads
                log.exception("repository listener failed")

    def _load_one(self, state: VersionState) -> None:
        start = time.perf_counter()
        try:
            for fname in ("metadata.json", "model.keras", "reference.npz"):
                file = state.path / fname  # a symlink must not lead outside the repository
                if file.is_symlink() and not self._inside_root(file):
                    raise LoadError(f"{fname} resolves outside the repository")
            try:
                spec_file = model_file.load(state.path.parent)
            except model_file.ModelFileError as exc:
                raise LoadError(str(exc)) from None
            if not (state.path / "metadata.json").is_file():
                metadata = bare_metadata(state.path, state.name, state.version)
            else:
                metadata = read_metadata(state.path)
            if str(metadata.get("name")) != state.name:
                raise LoadError(
                    f"metadata.json name {metadata.get('name')!r} differs from folder "
                    f"{state.name!r}"
                )
            if metadata.get("version") != state.version:
                raise LoadError(
                    f"metadata.json version {metadata.get('version')!r} differs from folder "
                    f"{state.version}"
                )
            runtime = self.runtime_factory(state.path, metadata, model_file=spec_file)
            runtime.load()
        except Exception as exc:  # LoadError and anything unexpected from a bad file
            state.status, state.reason = FAILED, str(exc) or type(exc).__name__
            state.load_seconds = time.perf_counter() - start
            log.error(
                "model %s version %s failed to load: %s", state.name, state.version, state.reason
            )
            self._changed = True
            self._emit(Event("failed", state.name, state.version, reason=state.reason))
            return
        state.runtime = runtime
        self._changed = True
        state.load_seconds = time.perf_counter() - start
        state.loaded_at = time.time()
        state.status, state.reason = READY, None
        log.info(
            "model %s version %s loaded and warmed in %.2fs",
            state.name,
            state.version,
            state.load_seconds,
        )
        self._emit(Event("loaded", state.name, state.version, seconds=state.load_seconds))

    def _wanted(self, versions: dict[int, VersionState], name: str = "") -> list[int]:
        """The versions that should be loaded: the newest ``max_versions`` not failed nor
        unloaded by an admin, plus the versions an admin loaded or made the default."""
        rule = self.overrides.get(name) or {}
        off = set(rule.get("unloaded") or ())
        ok = sorted(
            (v for v, st in versions.items() if st.status != FAILED and v not in off),
            reverse=True,
        )
        keep = ok[: self.max_versions] if self.max_versions else ok
        pinned = {*(rule.get("loaded") or ()), rule.get("default")} & set(ok)
        return keep + sorted(pinned - set(keep), reverse=True)

    def refresh(self) -> None:
        """Bring the served table in line with the disk: load new or rewritten versions
        (each model's newest first, each swapped in as soon as it is warm), drop deleted
        ones, and keep at most ``max_versions`` loaded per model. A version that fails
        does not take a slot, and an older version is only unloaded once a newer one is
        warm, so a bad publish never reduces what is served."""
        with self._write_lock:
            self._refresh()
            changed, self._changed = self._changed, False
        if changed:  # after _refresh returned: its locals no longer hold unloaded versions
            gc_freeze.settle()

    def _refresh(self) -> None:
        """``refresh`` under the write lock."""
        if self.before_scan is not None:
            self.before_scan()  # never raises for a store fault (it reports it)
        found = self.scan()
        current = self._versions
        table: dict[str, dict[int, VersionState]] = {}
        unloaded: list[VersionState] = []
        for name, versions in found.items():
            table[name] = {}
            for version, path in versions.items():
                sig = _signature(path)
                old = current.get(name, {}).get(version)
                failed = old is not None and old.status == FAILED
                retry = failed and (name, version) in self.retry  # admin "load"
                if old is not None and old.signature == sig and not retry:
                    table[name][version] = old  # unchanged (a failed one is not retried)
                    continue
                if old is not None and not failed:
                    unloaded.append(old)  # rewritten in place: reload
                table[name][version] = VersionState(name, version, path, sig)
        for name, versions in current.items():
            for version, state in versions.items():
                if version not in found.get(name, {}):
                    unloaded.append(state)
        self.retry = set()
        self._versions = table  # new versions appear as "loading"
        for state in unloaded:
            self._unload(state)
        while not self._stop.is_set():
            pending = []
            for name, versions in table.items():
                for rank, version in enumerate(self._wanted(versions, name)):
                    state = versions[version]
                    if state.status == SKIPPED:  # back in the window: load it again
                        state = versions[version] = VersionState(
                            name, version, state.path, state.signature
                        )
                    if state.status == LOADING:
                        pending.append((rank, -version, state))
            if not pending:
                break
            # every model's newest version first: what serves by default is ready soonest
            for _, _, state in sorted(pending, key=lambda t: t[:2]):
                if self._stop.is_set():
                    break
                self._load_one(state)  # flips state.status in place once warm
        for name, versions in table.items():
            wanted = set(self._wanted(versions, name))
            off = set((self.overrides.get(name) or {}).get("unloaded") or ())
            for version, state in list(versions.items()):
                if version in wanted or state.status in (FAILED, SKIPPED):
                    continue
                if state.status == READY:
                    self._unload(state)
                versions[version] = VersionState(
                    name,
                    version,
                    state.path,
                    state.signature,
                    status=SKIPPED,
                    reason="unloaded through the admin API"
                    if version in off
                    else f"older than the {self.max_versions} newest versions "
                    "(LAYERSCOPE_MAX_VERSIONS)",
                )
        self.last_scan = time.time()

    def _unload(self, state: VersionState) -> None:
        if state.status == SKIPPED:  # never loaded: nothing to release or report
            return
        # The state has already left the table; a request that fetched it a moment ago
        # still finishes on this runtime, which is freed with the last reference.
        runtime = state.runtime
        if runtime is not None and hasattr(runtime, "unload"):
            runtime.unload()
        log.info("model %s version %s unloaded", state.name, state.version)
        self._changed = True
        self._emit(Event("unloaded", state.name, state.version))

    # -- background polling ----------------------------------------------------------------
    def start(self, initial: bool = True) -> None:
        """Initial load plus polling in a daemon thread (call after fork, in the worker)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(
            target=self._run, args=(initial,), name="layerscope-reload", daemon=True
        )
        self._thread.start()

    def _run(self, initial: bool = True) -> None:
        if initial:
            try:
                self.refresh()
            except Exception:
                log.exception("initial model load failed")
            finally:
                self.initial_load_done.set()
        while self.poll_interval > 0 and not self._stop.wait(self.poll_interval):
            try:
                self.refresh()
            except Exception:  # keep polling; the next pass may succeed
                log.exception("model repository refresh failed")

    def load_now(self) -> None:
        """Synchronous initial load (tests, scripts)."""
        self.refresh()
        self.initial_load_done.set()

    def stop(self) -> None:
        self._stop.set()

    # -- queries (lock-free) -------------------------------------------------------------
    def models(self) -> dict[str, dict[int, VersionState]]:
        return self._versions

    def versions(self, name: str) -> dict[int, VersionState]:
        versions = self._versions.get(name)
        if not versions:
            known = ", ".join(sorted(self._versions)) or "none"
            raise ModelNotFound(f"model {name!r} not found; available models: {known}")
        return versions

    def default_version(self, name: str) -> int | None:
        """The admin-pinned default when it is READY, else the latest READY version (what
        an unversioned request gets)."""
        versions = self.versions(name)
        pinned = (self.overrides.get(name) or {}).get("default")
        if pinned in versions and versions[pinned].status == READY:
            return pinned
        ready = [v for v, s in versions.items() if s.status == READY]
        return max(ready) if ready else None

    def get(self, name: str, version: int | None = None):
        """The runtime serving ``name`` (latest ready version unless ``version`` given)."""
        versions = self.versions(name)
        if version is None:
            version = self.default_version(name)
            if version is None:
                detail = "; ".join(
                    f"v{v}: {s.status}" + (f" ({s.reason})" if s.reason else "")
                    for v, s in sorted(versions.items())
                )
                raise ModelNotReady(f"model {name!r} has no ready version yet: {detail}")
        state = versions.get(version)
        if state is None:
            raise ModelNotFound(
                f"model {name!r} has no version {version}; available versions: "
                f"{', '.join(str(v) for v in sorted(versions))}"
            )
        if state.status == SKIPPED:
            raise ModelNotFound(f"model {name!r} version {version} is not loaded: {state.reason}")
        runtime = state.runtime
        if state.status != READY or runtime is None:
            reason = f": {state.reason}" if state.reason else ""
            raise ModelNotReady(f"model {name!r} version {version} is {state.status}{reason}")
        return runtime

    def state(self, name: str, version: int) -> VersionState:
        versions = self.versions(name)
        if version not in versions:
            raise ModelNotFound(
                f"model {name!r} has no version {version}; available versions: "
                f"{', '.join(str(v) for v in sorted(versions))}"
            )
        return versions[version]

    def model_ready(self, name: str, versions: dict[int, VersionState] | None = None) -> bool:
        """The latest published version that has not failed is loaded and warmed."""
        versions = self.versions(name) if versions is None else versions
        pinned = (self.overrides.get(name) or {}).get("default")
        if pinned in versions and versions[pinned].status not in (FAILED, SKIPPED):
            return versions[pinned].status == READY
        candidates = [v for v, s in versions.items() if s.status not in (FAILED, SKIPPED)]
        return bool(candidates) and versions[max(candidates)].status == READY

    @staticmethod
    def _serving(versions: dict[int, VersionState]) -> bool:
        """A version is being loaded and another one is ready to answer meanwhile."""
        statuses = {s.status for s in versions.values()}
        return READY in statuses and LOADING in statuses

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        if not self.initial_load_done.is_set():
            return False, {"reason": "initial model load in progress"}
        table = self._versions
        # Once the initial load is done, a model whose newest version is still loading
        # (a hot reload) stays ready while an older version serves: every replica behind a
        # balancer or a Service picks a new version up at the same moment, and none may
        # leave the pool for it (docs/scaling.md).
        detail = {
            name: self.model_ready(name, versions) or self._serving(versions)
            for name, versions in table.items()
        }
        if not table:
            return False, {"reason": f"no model versions found in {self.root}"}
        return all(detail.values()), {"models": detail}
