"""In-process figures: the same runtime a worker serves with, called directly.

Run as a subprocess by ``bench.run`` (``python -m bench.inprocess VERSION_DIR RUNTIME ...``)
so TensorFlow gets the worker's thread settings before it is imported. Prints one JSON
object: single-row latency percentiles (one caller) and rows/s of batched calls with as
many concurrent callers as the server has workers."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path


def measure(version_dir: Path, runtime: str, batch: int, seconds: float, callers: int) -> dict:
    import numpy as np

    from service import configure_tensorflow
    from service.runtime import KerasRuntime
    from service.serving import LiteRTRuntime
    from service.settings import load_settings

    settings = load_settings()
    configure_tensorflow(settings)
    if runtime == "keras":
        rt = KerasRuntime(version_dir)
    else:
        rt = LiteRTRuntime(
            version_dir,
            threads=settings.intra_op_threads,
            activation_parity=settings.activation_parity,
        )
    rt.load()
    with np.load(version_dir / "reference.npz") as ref:
        x = np.asarray(ref["x"], dtype=np.float32)
    single = x[:1]
    rows = np.concatenate([x] * (batch // len(x) + 1))[:batch]

    for _ in range(50):
        rt.predict(single)
    latencies = []
    end = time.perf_counter() + seconds / 2
    while time.perf_counter() < end:
        t = time.perf_counter()
        rt.predict(single)
        latencies.append(time.perf_counter() - t)
    lat = np.array(latencies) * 1000

    counts = [0] * callers
    stop = threading.Event()

    def loop(i: int) -> None:
        while not stop.is_set():
            rt.predict(rows)
            counts[i] += 1

    rt.predict(rows)
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(callers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds / 2)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return {
        "runtime": getattr(rt, "backend", "tensorflow"),
        "single_p50_ms": float(np.percentile(lat, 50)),
        "single_p99_ms": float(np.percentile(lat, 99)),
        "single_rps": float(len(lat) / (lat.sum() / 1000)),
        "batch": batch,
        "callers": callers,
        "batch_rows_per_s": float(sum(counts) * batch / elapsed),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("version_dir", type=Path)
    parser.add_argument("runtime", choices=["keras", "litert", "auto"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--callers", type=int, default=1)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    result = measure(args.version_dir, args.runtime, args.batch, args.seconds, args.callers)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
