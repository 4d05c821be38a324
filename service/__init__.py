"""Layerscope service: Flask app factory.

``create_app`` runs inside each Gunicorn worker (no ``--preload``), so TensorFlow and
the models are only ever loaded after fork. Loading happens in a background thread so
the worker answers /healthz and a 503 /readyz while models warm up."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from dataclasses import dataclass
from types import FunctionType
from typing import Any

import orjson
from flask import Flask
from flask.json.provider import JSONProvider

from service import errors, serving
from service.repository import ModelRepository
from service.settings import Settings, load_settings


@dataclass
class Layerscope:
    settings: Settings
    repository: ModelRepository


class OrjsonProvider(JSONProvider):
    """orjson is several times faster than json for the float arrays we return."""

    options = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return orjson.dumps(obj, option=self.options).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return orjson.loads(s)

    def response(self, *args: Any, **kwargs: Any):
        obj = self._prepare_response_obj(args, kwargs)
        return self._app.response_class(
            orjson.dumps(obj, option=self.options), mimetype="application/json"
        )


class LayerscopeFlask(Flask):
    """Flask, remembering which plain functions are synchronous: ``ensure_sync`` runs for
    every hook and view of every request (nine on a prediction), and each call asked
    ``inspect.iscoroutinefunction`` again about the same few registered functions."""

    _SYNC_CACHE_LIMIT = 1024  # registered hooks and views; anything beyond is not cached

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sync_functions: set[FunctionType] = set()

    def ensure_sync(self, func: Any) -> Any:
        plain = type(func) is FunctionType  # registered functions: stable objects
        if plain and func in self._sync_functions:
            return func
        wrapped = super().ensure_sync(func)
        if plain and wrapped is func and len(self._sync_functions) < self._SYNC_CACHE_LIMIT:
            self._sync_functions.add(func)
        return wrapped


def configure_tensorflow(settings: Settings) -> None:
    """Thread pools sized per worker; must happen before TF runs its first op."""
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(settings.intra_op_threads))
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", str(settings.inter_op_threads))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(settings.intra_op_threads)
        tf.config.threading.set_inter_op_parallelism_threads(settings.inter_op_threads)
    except RuntimeError:  # already initialised (e.g. a second app in the same process)
        pass


def _configure_logging(settings: Settings) -> None:
    level = settings.log_level.upper()
    logger = logging.getLogger("layerscope")
    logger.setLevel(level)
    if not logging.getLogger().handlers and not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        logger.addHandler(handler)


def _import_custom_objects(settings: Settings) -> None:
    """Import the modules that register a model's custom layers and models (Keras'
    ``register_keras_serializable``), so ``safe_mode`` loading can resolve them."""
    for name in settings.custom_objects_modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # a bad setting: every model needing it fails, visibly
            logging.getLogger("layerscope").error(
                "LAYERSCOPE_CUSTOM_OBJECTS_MODULES: cannot import %r: %s", name, exc
            )


def create_app(config: dict[str, Any] | None = None) -> Flask:
    settings = load_settings({k.lower(): v for k, v in (config or {}).items()})
    _configure_logging(settings)
    configure_tensorflow(settings)

    app = LayerscopeFlask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json = OrjsonProvider(app)
    errors.install(app)

    repository = ModelRepository(
        settings.model_repository,
        settings.poll_interval,
        runtime_factory=serving.runtime_factory(settings),
        max_versions=settings.max_versions,
        single_model=settings.model_name,  # KServe's /mnt/models layout (docs/scaling.md)
    )
    app.extensions["layerscope"] = Layerscope(settings, repository)

    _import_custom_objects(settings)
    from service import batching, logs, metrics, openapi, security, storage, warmup
    from service.api import admin, health, introspect, native, tfserving, understand, v2

    # protocol front ends and introspection: one blueprint per concern
    for module in (health, native, tfserving, v2, introspect):
        app.register_blueprint(module.bp)
    # cross-cutting concerns hook into every request or into the repository's events
    # (storage before admin: with an s3:// repository the admin state lives in the store)
    for module in (metrics, logs, security, storage, admin, openapi, warmup, batching, understand):
        module.init_app(app)

    if settings.load_in_background:
        repository.start()
    else:
        repository.load_now()
        if settings.poll_interval > 0:
            repository.start(initial=False)
    return app
