"""Typed settings read from ``LAYERSCOPE_*`` environment variables.

Imported by ``gunicorn_conf.py`` in the Gunicorn master, so it must never import
TensorFlow (models are loaded only after fork, in the workers)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The gates LiteRT activations may be held to (service/serving.py checks the same names).
ActivationParity = Literal["layer-scaled", "absolute"]


def cpu_count() -> int:
    """Cores this process may use (respects CPU affinity / cgroup-pinned sets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class ServingOverride(BaseModel):
    """Per-model serving options (LAYERSCOPE_SERVING); unset fields use the globals."""

    model_config = ConfigDict(extra="forbid")

    runtime: Literal["auto", "keras", "litert"] | None = None
    activation_parity: ActivationParity | None = None
    batching: Literal["auto"] | bool | None = None
    batch_max_size: int | None = Field(None, ge=1)
    batch_max_delay_ms: float | None = Field(None, ge=0, le=1000)
    batch_queue_size: int | None = Field(None, ge=1)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LAYERSCOPE_", extra="ignore", protected_namespaces=()
    )

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    model_repository: Path = Path("models")
    # One worker per core (capped): each worker holds every model, so memory grows with it.
    workers: int = Field(default_factory=lambda: min(cpu_count(), 8), ge=1)
    # gthread threads per worker: TF releases the GIL, and a thread stays free for probes.
    threads: int = Field(4, ge=1)
    timeout: int = Field(60, ge=1)
    graceful_timeout: int = Field(30, ge=1)
    poll_interval: float = Field(5.0, ge=0)  # hot reload period in seconds, 0 = off
    # versions loaded per model, newest first (each costs memory in every worker); 0 = all
    max_versions: int = Field(3, ge=0)
    load_in_background: bool = True  # False: create_app returns only after the first load
    max_batch_size: int = Field(256, ge=1)
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    max_activation_values: int = Field(2_000_000, ge=1)
    max_image_pixels: int = Field(4096 * 4096, ge=1)
    # Versions over these are reported in GET /models and not loaded (0 = no limit).
    max_model_bytes: int = Field(2 * 1024**3, ge=0)
    max_model_params: int = Field(200_000_000, ge=0)
    # Modules imported in each worker before models load: they register the custom layers
    # and models (keras.saving.register_keras_serializable) that safe_mode may then load.
    custom_objects_modules: list[str] = Field(default_factory=list)
    # What hidden layers learned (service/api/understand.py): probes run in the background
    # after a version loads and are cached here, shared by every worker.
    cache_dir: Path | None = None  # default: <tmp>/layerscope-cache
    probes_on_load: bool = True
    probe_folds: int = Field(5, ge=2, le=20)
    understanding_max_rows: int = Field(2000, ge=10)  # reference rows any computation reads
    understanding_max_units: int = Field(512, ge=2)  # wider layers: random projection
    compare_max_rows: int = Field(500, ge=10)  # rows of a CKA comparison (n x n Grams)
    log_level: str = "info"
    activation_sample_every: int = Field(20, ge=0)  # 1 model call in N feeds drift metrics
    activation_sample_interval: float = Field(1.0, ge=0)  # ... at most once per N s (0: any)
    # Bearer tokens (SecretStr: never printed in a repr or a log). No admin token = no
    # admin API (404); no introspection token = introspection endpoints open.
    admin_token: SecretStr | None = None
    introspection_token: SecretStr | None = None
    # Admin decisions shared by every worker; default <model_repository>/.admin-state.json
    admin_state_file: Path | None = None
    intra_op_threads: int = Field(0, ge=0)  # 0 = derived from cores / workers
    inter_op_threads: int = Field(0, ge=0)
    # Performance (service/serving.py, service/batching.py); per-model overrides in
    # LAYERSCOPE_SERVING, e.g. '{"fraud": {"runtime": "keras", "batching": false}}'.
    runtime: Literal["auto", "keras", "litert"] = "auto"  # auto: LiteRT where it converts
    # the gate LiteRT hidden-layer activations pass before they serve: every layer within
    # 1e-5 of TensorFlow ("absolute": issue 4's bound, which a CNN's wide Dense layer
    # misses by float32 summation order), or within 1e-5 x max(1, its largest |value|)
    # ("layer-scaled": opt-in; the CNNs' forward pass ~10x faster). Predictions always keep
    # the absolute 1e-5 gate.
    activation_parity: ActivationParity = "absolute"
    # models with more parameters serve through TensorFlow at once and are converted to
    # LiteRT in the background (0: every model converted before it serves)
    litert_sync_max_params: int = Field(1_000_000, ge=0)
    # dynamic batching of plain predictions; auto: on where a batched call is measured
    # (at load) to be much cheaper per row than single-row calls
    batching: Literal["auto"] | bool = "auto"
    batch_max_size: int = Field(64, ge=1)  # rows per batched model call
    batch_max_delay_ms: float = Field(0.0, ge=0, le=1000)  # 0: batch what is already queued
    batch_queue_size: int = Field(256, ge=1)  # waiting requests per model; then 503
    serving: dict[str, ServingOverride] = Field(default_factory=dict)
    # Slow clients (docs/reliability.md): each worker's main loop reads request heads and
    # bodies (service/workers.py); its threads only ever get complete requests.
    header_timeout: float = Field(10.0, gt=0)  # s for a whole request head, then 408
    body_timeout: float = Field(10.0, gt=0)  # s for a body, plus its length / body_min_rate
    body_min_rate: int = Field(65536, ge=1)  # bytes/s a body's length adds to its deadline
    keepalive_timeout: int = Field(5, ge=0)  # s an idle keep-alive connection stays open
    max_connections: int = Field(1000, ge=1)  # open connections per worker; 503 beyond
    max_buffered_bytes: int = Field(64 * 1024 * 1024, ge=1)  # unfinished requests, per worker
    # gRPC (docs/grpc.md): the Open Inference Protocol's GRPCInferenceService and TF
    # Serving's PredictionService / ModelService on one port, served inside every Gunicorn
    # worker (SO_REUSEPORT: the kernel spreads connections over the workers); 0 = off.
    grpc_port: int = Field(8001, ge=0, le=65535)
    grpc_threads: int = Field(0, ge=0)  # handler threads per worker; 0 = LAYERSCOPE_THREADS
    grpc_max_concurrent_rpcs: int = Field(256, ge=1)  # per worker; RESOURCE_EXHAUSTED beyond
    grpc_max_concurrent_streams: int = Field(100, ge=1)  # HTTP/2 streams per connection
    grpc_keepalive_time: float = Field(60.0, gt=0)  # s between the server's keep-alive pings
    grpc_keepalive_timeout: float = Field(20.0, gt=0)  # s a ping may go unanswered: closed
    grpc_min_ping_interval: float = Field(10.0, ge=0)  # s a client's pings must leave apart
    grpc_max_connection_idle: float = Field(300.0, ge=0)  # s without calls: GOAWAY (0 = off)
    grpc_max_connection_age: float = Field(600.0, ge=0)  # s, then GOAWAY (0 = no limit)
    grpc_max_connection_age_grace: float = Field(30.0, ge=0)  # s for its calls to finish
    grpc_handshake_timeout: float = Field(10.0, gt=0)  # s for a new connection's handshake
    # Object storage and replicas (docs/scaling.md). LAYERSCOPE_MODEL_REPOSITORY=s3://bucket/
    # prefix is mirrored (complete, checksum-verified versions only) into
    # repository_cache_dir, which becomes model_repository; the admin state lives in the
    # store, shared by every replica. Endpoint and credentials: the AWS SDK's variables
    # (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION).
    repository_url: str | None = None  # set from an s3:// model_repository, not by hand
    repository_cache_dir: Path | None = None  # default <tmp>/layerscope-repository-<hash>
    # KServe's layout: model_repository (/mnt/models) holds ONE model's version folders,
    # served under this name (the ClusterServingRuntime sets it from the InferenceService)
    model_name: str | None = Field(None, pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")

    @model_validator(mode="before")
    @classmethod
    def _object_storage(cls, data: Any) -> Any:
        """An s3:// repository: the URL to sync from, the local cache folder to serve."""
        if isinstance(data, dict):
            url = data.get("model_repository")
            if isinstance(url, str) and url.startswith("s3://"):
                from service.storage import default_cache_dir

                data = dict(data)
                data["repository_url"] = url.rstrip("/")
                data["model_repository"] = data.get("repository_cache_dir") or (
                    default_cache_dir(url.rstrip("/"))
                )
        return data

    @model_validator(mode="after")
    def _check_buffer(self) -> Settings:
        if self.max_buffered_bytes < self.max_body_bytes:
            raise ValueError(
                "max_buffered_bytes must be at least max_body_bytes, or no body of the "
                f"largest allowed size could ever be read. Received: max_buffered_bytes="
                f"{self.max_buffered_bytes}, max_body_bytes={self.max_body_bytes}"
            )
        return self

    @model_validator(mode="after")
    def _derive_threads(self) -> Settings:
        """Split the cores between workers so N workers do not oversubscribe the CPU."""
        if not self.intra_op_threads:
            self.intra_op_threads = max(1, cpu_count() // self.workers)
        if not self.inter_op_threads:
            self.inter_op_threads = 1 if self.workers > 1 else 2
        return self


def load_settings(overrides: dict[str, Any] | None = None) -> Settings:
    """Environment first, then explicit overrides (tests pass a tmp repository)."""
    return Settings(**(overrides or {}))
