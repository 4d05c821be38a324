"""What bounds hidden-layer activations against predictions (docs/grpc.md, "Figures"):

    python -m bench.activation_parity                 # fashion, mnist, fraud in models/
    python -m bench.activation_parity --models fashion --calls 2000

For each model's latest version, loaded as the service loads it (``ModelRuntime`` composed
with the LiteRT accelerator, one TensorFlow thread as each of two workers on 2 cores gets):

* per layer, on the version's reference rows: the largest |value|, how far LiteRT's
  multi-output conversion lands from TensorFlow on the same batch, how far TensorFlow lands
  from itself when the same rows come one by one instead of as one batch, how far an
  XLA-compiled function of the same model lands, and the gates that follow
  (``absolute``: 1e-5; ``layer-scaled``: 1e-5 x max(1, largest |value|));
* per call at one row, interleaved: a prediction and every layer, on each engine.

The default gate (issue 4: activations equal Keras' own within 1e-5) can only be met by
TensorFlow's own kernels on a layer whose values reach tens: a float32 sum of thousands of
products in another order (XNNPACK, TFLite's kernels, XLA, or TensorFlow at another batch
size) moves it by more than 1e-5. The timing rows say what that costs a request for every
layer against a LiteRT prediction."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _runtime(version: Path):
    from service.runtime import ModelRuntime
    from service.serving import LiteRT

    meta = json.loads((version / "metadata.json").read_text())
    runtime = ModelRuntime(
        version, meta, accelerator=LiteRT(threads=1, activation_parity="layer-scaled")
    )
    runtime.load()
    return runtime


def _xla(tf_engine, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every layer through an XLA-compiled (``jit_compile``) function of the same model."""
    import tensorflow as tf

    multi = tf_engine.multi

    @tf.function(jit_compile=True)
    def run(batch):
        out = multi(batch, training=False)
        return list(out) if isinstance(out, (list, tuple)) else [out]

    return {n: np.asarray(v) for n, v in zip(tf_engine.entry_names, run(x), strict=True)}


def _per_call_ms(fns: dict, calls: int) -> dict[str, float]:
    """Median milliseconds per call of each function, called in turn (same load on all)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(calls):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: 1e3 * float(np.median(v)) for k, v in times.items()}


def report(name: str, version: Path, calls: int, rows: int) -> list[str]:
    from service.serving import ACTIVATION_TOLERANCE, parity_sample

    runtime = _runtime(version)
    tf_engine, lite = runtime.tensorflow, runtime.accelerator
    names = tf_engine.entry_names
    x = parity_sample(runtime)[:rows]
    whole = tf_engine.run([x], names)
    one_by_one = [tf_engine.run([x[i : i + 1]], names) for i in range(min(16, len(x)))]
    xla = _xla(tf_engine, x)
    inspector = lite.inspector  # None where even the layer-scaled gate failed
    lite_out = inspector.run([x], names) if inspector is not None else None
    out = [
        f"### {name} v{version.name}: predict on {lite.backend}, activations gate "
        f"layer-scaled -> {lite.activations_backend}",
        "",
        "| layer | max \\|value\\| | LiteRT vs TF (same batch) | TF one row vs TF batch | "
        "XLA vs TF | absolute gate | layer-scaled gate |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for n in names:
        want = np.asarray(whole[n], dtype=np.float32)
        scale = max(1.0, float(np.abs(want).max()))
        own = max(float(np.abs(o[n][0] - want[i]).max()) for i, o in enumerate(one_by_one))
        lite_diff = float(np.abs(lite_out[n] - want).max()) if lite_out is not None else None
        ok_abs = lite_diff is not None and lite_diff <= ACTIVATION_TOLERANCE
        ok_scaled = lite_diff is not None and lite_diff <= ACTIVATION_TOLERANCE * scale
        out.append(
            f"| {n} | {float(np.abs(want).max()):.3g} | "
            f"{'—' if lite_diff is None else f'{lite_diff:.2e}'} | {own:.2e} | "
            f"{float(np.abs(xla[n] - want).max()):.2e} | "
            f"{'pass' if ok_abs else '**fail**'} | {'pass' if ok_scaled else '**fail**'} |"
        )
    one = x[:1]
    fns = {
        "TensorFlow predict": lambda: tf_engine.predict([one]),
        "TensorFlow every layer": lambda: tf_engine.run([one], names),
    }
    if lite.predictor is not None:
        fns["LiteRT predict"] = lambda: lite.predictor.predict([one])
    if inspector is not None:
        fns["LiteRT every layer"] = lambda: inspector.run([one], names)
    ms = _per_call_ms(fns, calls)
    base = ms.get("LiteRT predict", ms["TensorFlow predict"])
    out += [
        "",
        f"one row, median of {calls} interleaved calls:",
        "",
        "| call | ms | / the served predict |",
        "|---|---:|---:|",
        *(f"| {k} | {v:.3f} | {v / base:.2f} |" for k, v in ms.items()),
        "",
    ]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["fashion", "mnist", "fraud"])
    parser.add_argument(
        "--repository",
        type=Path,
        default=Path(os.environ.get("LAYERSCOPE_MODEL_REPOSITORY", ROOT / "models")),
    )
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=256, help="reference rows compared")
    args = parser.parse_args(argv)

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from bench.run import latest_version

    lines = [f"activation parity and cost, {os.cpu_count()} cores, 1 TensorFlow thread", ""]
    for name in args.models:
        version = latest_version(args.repository / name)
        if version is None:
            lines.append(f"{name}: no published version under {args.repository / name}")
            continue
        lines += report(name, version, args.calls, args.rows)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
