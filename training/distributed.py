"""Data-parallel training: Keras' distribution API (``keras.distribution.DataParallel``)
over ``jax.distributed`` (gloo collectives on CPU), and the local ``--processes N``
launcher. See docs/training.md for the engine choice and the environment contract.

The environment is Keras' own, read by ``keras.distribution.initialize()``:

* ``KERAS_DISTRIBUTION_JOB_ADDRESSES``  comma-separated ``host:port``; the first is the
  coordinator (process 0's address; JAX only needs that one)
* ``KERAS_DISTRIBUTION_NUM_PROCESSES``  the number of processes of the job
* ``KERAS_DISTRIBUTION_PROCESS_ID``     this process's id, ``0 .. N-1``; when unset,
  ``JOB_COMPLETION_INDEX`` (a Kubernetes Indexed Job) is used

Process 0 is the chief: only it computes predictions, the threshold, the baseline and
publishes. Gradients are never averaged by hand: every process feeds its process-local
share of each global batch and XLA's SPMD partitioner inserts the all-reduce.

Nothing here imports Keras at module level (the backend must be chosen first).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.config import ConfigError

ENV_ADDRESSES = "KERAS_DISTRIBUTION_JOB_ADDRESSES"
ENV_NUM_PROCESSES = "KERAS_DISTRIBUTION_NUM_PROCESSES"
ENV_PROCESS_ID = "KERAS_DISTRIBUTION_PROCESS_ID"
ENV_K8S_INDEX = "JOB_COMPLETION_INDEX"
ENGINE = "keras.distribution.DataParallel over jax.distributed"
BACKENDS = ("tensorflow", "jax")


class DistributionError(ConfigError):
    """The distribution environment or options are inconsistent (exit 2)."""

    def __init__(self, message: str):
        super().__init__("distribution", message)


@dataclass(frozen=True)
class ClusterSpec:
    """One process's view of the job, from the environment."""

    addresses: tuple[str, ...]
    num_processes: int
    process_id: int

    @property
    def coordinator(self) -> str:
        return self.addresses[0]


def _int_env(env: dict, key: str) -> int:
    try:
        return int(env[key])
    except ValueError:
        raise DistributionError(f"{key}: expected an integer. Received: {key}={env[key]!r}") \
            from None


def cluster_spec(environ: dict | None = None) -> ClusterSpec | None:
    """The job this process belongs to, or None for a single-process run
    (``KERAS_DISTRIBUTION_NUM_PROCESSES`` unset or 1)."""
    env = os.environ if environ is None else environ
    if not env.get(ENV_NUM_PROCESSES):
        return None
    n = _int_env(env, ENV_NUM_PROCESSES)
    if n < 1:
        raise DistributionError(f"{ENV_NUM_PROCESSES}: expected >= 1. Received: {n}")
    if n == 1:
        return None
    if env.get(ENV_PROCESS_ID, "") != "":
        pid = _int_env(env, ENV_PROCESS_ID)
    elif env.get(ENV_K8S_INDEX, "") != "":
        pid = _int_env(env, ENV_K8S_INDEX)
    else:
        raise DistributionError(f"{ENV_NUM_PROCESSES}={n} needs {ENV_PROCESS_ID} (or "
                                f"{ENV_K8S_INDEX} from a Kubernetes Indexed Job)")
    if not 0 <= pid < n:
        raise DistributionError(f"process id must be in [0, {n - 1}]. Received: {pid}")
    addresses = tuple(a.strip() for a in env.get(ENV_ADDRESSES, "").split(",") if a.strip())
    if not addresses:
        raise DistributionError(f"{ENV_NUM_PROCESSES}={n} needs {ENV_ADDRESSES} "
                                f"(host:port of process 0 first)")
    if len(addresses) not in (1, n):
        raise DistributionError(f"{ENV_ADDRESSES} lists {len(addresses)} addresses for "
                                f"{n} processes (give one per process, or the coordinator "
                                f"alone). Received: {env[ENV_ADDRESSES]!r}")
    return ClusterSpec(addresses, n, pid)


# --------------------------------------------------------------------------- in a process


@dataclass
class Context:
    """How this process trains: alone (``distribution`` None) or as one of N."""

    backend: str
    num_processes: int = 1
    process_id: int = 0
    distribution: Any = None

    @property
    def multi(self) -> bool:
        return self.num_processes > 1

    @property
    def is_chief(self) -> bool:
        return self.process_id == 0

    def scope(self):
        return self.distribution.scope() if self.distribution is not None \
            else contextlib.nullcontext()

    def describe(self, global_batch: int) -> dict[str, Any]:
        """metadata["training"]."""
        out: dict[str, Any] = {"backend": self.backend, "processes": self.num_processes,
                               "engine": ENGINE if self.multi else "keras.Model.fit",
                               "global_batch_size": int(global_batch),
                               "per_process_batch_size": int(global_batch)
                               // self.num_processes}
        if self.multi:
            import jax

            out["devices"] = jax.device_count()
        return out


_CONTEXT: Context | None = None


def context() -> Context:
    """This process's training context; joins the job named by the environment the first
    time it is asked (``keras.distribution.initialize()`` then a ``DataParallel`` mesh over
    every process's devices). Idempotent."""
    global _CONTEXT
    import keras

    backend = keras.backend.backend()
    spec = cluster_spec()
    if _CONTEXT is not None:
        return _CONTEXT
    if spec is None:
        _CONTEXT = Context(backend)
        return _CONTEXT
    if backend != "jax":
        raise DistributionError(
            f"{ENV_NUM_PROCESSES}={spec.num_processes}: data-parallel training runs on "
            f"the JAX backend (--backend jax). Received: backend={backend!r}")
    os.environ[ENV_PROCESS_ID] = str(spec.process_id)  # JOB_COMPLETION_INDEX fallback
    os.environ[ENV_ADDRESSES] = ",".join(spec.addresses) if len(spec.addresses) > 1 \
        else spec.coordinator
    keras.distribution.initialize()
    import jax

    if jax.process_count() != spec.num_processes:
        raise DistributionError(f"jax.distributed joined {jax.process_count()} processes, "
                                f"expected {spec.num_processes}")
    dist = keras.distribution.DataParallel(auto_shard_dataset=False)  # we feed local shares
    _CONTEXT = Context(backend, spec.num_processes, jax.process_index(), dist)
    return _CONTEXT


def batches(x: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None, *,
            global_batch: int, process_id: int = 0, num_processes: int = 1,
            shuffle: bool = False, seed: int = 0):
    """A ``keras.utils.PyDataset`` yielding this process's share of every global batch.

    The order of the rows is a permutation drawn from (seed, epoch), the same on every
    process, so N processes see exactly the global batches one process would. A global
    batch of ``m`` rows gives each process ``m / N`` of them; the ragged last one, when
    ``m`` is not a multiple of N, is fed whole by every process (the global batch is then
    N identical copies: the same mean loss, gradient, batch-norm statistics and metrics).
    Pass ``shuffle=False`` to ``fit`` (Keras would reorder the batches per process).
    """
    import keras

    n = len(y)
    if global_batch % num_processes:
        raise DistributionError(f"training.batch_size={global_batch} (the global batch) "
                                f"must be a multiple of the {num_processes} processes")

    class GlobalBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False)
            self.epoch = 0
            self._order = self._permutation()

        def _permutation(self) -> np.ndarray:
            if not shuffle:
                return np.arange(n)
            return np.random.default_rng([int(seed), self.epoch]).permutation(n)

        def __len__(self) -> int:
            return -(-n // global_batch)

        def __getitem__(self, k: int):
            idx = self._order[k * global_batch:(k + 1) * global_batch]
            if len(idx) % num_processes == 0:
                share = len(idx) // num_processes
                idx = idx[process_id * share:(process_id + 1) * share]
            if sample_weight is None:
                return x[idx], y[idx]
            return x[idx], y[idx], sample_weight[idx]

        def on_epoch_end(self):
            self.epoch += 1
            self._order = self._permutation()

    return GlobalBatches()


def local_copy(model: Any, rebuild: Callable[[], Any], ctx: Context) -> Any:
    """The trained weights in a model built without the distribution (the chief's
    predictions, threshold, baseline and the saved file run on it alone)."""
    weights = [np.asarray(w) for w in model.get_weights()]  # replicated: readable here
    import keras

    keras.distribution.set_distribution(None)
    fresh = rebuild()
    fresh.set_weights(weights)
    return fresh


# --------------------------------------------------------------------------- launcher


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def strip_option(argv: Sequence[str], name: str) -> list[str]:
    """argv without ``name VALUE`` / ``name=VALUE``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == name:
            skip = True
        elif not a.startswith(name + "="):
            out.append(a)
    return out


def _pump(stream, prefix: str, lock: threading.Lock, out) -> None:
    for line in iter(stream.readline, ""):
        with lock:
            out.write(f"{prefix}{line}" if line.endswith("\n") else f"{prefix}{line}\n")
            out.flush()
    stream.close()


def _stop(procs: list[subprocess.Popen], grace: float = 5.0) -> None:
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.poll() is None:  # stuck in a collective waiting for a dead peer
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait()


def launch(child_argv: Sequence[str], num_processes: int, *,
           log: Callable[[str], None] = print, out=None) -> int:
    """Run ``python -m training <child_argv>`` as N processes of one job over 127.0.0.1,
    streaming their output prefixed ``[pI] ``. If any exits non-zero the others are
    stopped (SIGTERM, then SIGKILL) and the status is 1; the chief publishes only after a
    training every process completed, so a failed run publishes nothing."""
    out = out or sys.stdout
    port = free_port()
    addresses = ",".join(f"127.0.0.1:{port if i == 0 else free_port()}"
                         for i in range(num_processes))
    repo = str(Path(__file__).resolve().parents[1])
    base = dict(os.environ)
    base.pop(ENV_K8S_INDEX, None)
    base.update({ENV_ADDRESSES: addresses, ENV_NUM_PROCESSES: str(num_processes),
                 "KERAS_BACKEND": "jax", "PYTHONUNBUFFERED": "1",
                 "PYTHONPATH": os.pathsep.join(filter(None, [repo,
                                                             base.get("PYTHONPATH")]))})
    log(f"[launch] {num_processes} processes over 127.0.0.1 (coordinator "
        f"{addresses.split(',')[0]}), engine: {ENGINE}")
    lock = threading.Lock()
    procs: list[subprocess.Popen] = []
    pumps: list[threading.Thread] = []
    status = 0
    try:
        for i in range(num_processes):
            env = dict(base, **{ENV_PROCESS_ID: str(i)})
            p = subprocess.Popen([sys.executable, "-m", "training", *child_argv], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 bufsize=1)
            procs.append(p)
            log(f"[launch] process {i}: pid {p.pid}")
            t = threading.Thread(target=_pump, args=(p.stdout, f"[p{i}] ", lock, out),
                                 daemon=True)
            t.start()
            pumps.append(t)
        while True:
            codes = [p.poll() for p in procs]
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                i, c = failed[0]
                _stop(procs)
                log(f"[launch] process {i} exited with status {c}; stopped the others; "
                    f"nothing was published")
                status = 1
                break
            if all(c == 0 for c in codes):
                break
            time.sleep(0.2)
    except BaseException:
        _stop(procs)
        raise
    finally:
        for t in pumps:
            t.join(timeout=5)
    if status == 0:
        log(f"[launch] all {num_processes} processes exited 0")
    return status
