"""Bring your own model: what a ``keras.applications`` network costs to serve.

``python -m bench.byom`` builds MobileNetV2 at 224 x 224 (alpha 1.0, 1000 classes, 3.5 M
parameters, ``weights=None``: random weights, nothing is downloaded), drops it BARE
(``<repo>/mobilenetv2/1/model.keras`` only) into a temporary repository and measures:

* **load + warm-up** through ``service.runtime.ModelRuntime`` (the serving path: file
  size check, ``keras.saving.load_model(safe_mode=True)``, graph flattening and
  description, both compiled functions traced and warmed), in a fresh process each time
  (TensorFlow already imported, as in a worker), with the time Keras alone then takes to
  load the same file again;
* **predict latency** of the runtime called directly (``predict_outputs``) for 1 image and
  a batch of ``--batch`` images;
* through the app (``create_app`` + Flask's WSGI test client: JSON decoding, the
  protocol, encoding): ``POST /models/mobilenetv2/predict`` for 1 image, and
  ``POST /models/mobilenetv2/activations`` for the same image with every computed layer
  and ``"include": ["stats"]`` (per-layer statistics only, no values).

TensorFlow gets a Gunicorn worker's thread settings (``service.configure_tensorflow``;
``LAYERSCOPE_WORKERS`` / ``LAYERSCOPE_INTRA_OP_THREADS`` change them). ``--runtime auto``
measures the load with the default runtime choice as well (LiteRT conversion and parity
gates). ``--tiny`` (the CI smoke, tests/perf/test_bench_byom.py) uses MobileNetV2 at 32 x
32, alpha 0.35, and few repeats. Prints a Markdown table (``--out`` also writes it)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NAME = "mobilenetv2"
ROOT = Path(__file__).resolve().parents[1]


def build(repo: Path, tiny: bool) -> dict:
    import keras

    keras.utils.set_random_seed(0)
    if tiny:
        model = keras.applications.MobileNetV2(
            input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10
        )
    else:
        model = keras.applications.MobileNetV2(input_shape=(224, 224, 3), weights=None)
    folder = repo / NAME / "1"
    folder.mkdir(parents=True)
    model.save(folder / "model.keras")
    return {
        "params": int(model.count_params()),
        "layers": len(model.layers),
        "input": list(model.inputs[0].shape[1:]),
        "bytes": (folder / "model.keras").stat().st_size,
    }


def load_once(folder: Path, runtime: str) -> dict:
    """Run in a fresh process: the load of one version, timed."""
    from service import configure_tensorflow, serving
    from service.runtime import ModelRuntime, bare_metadata
    from service.settings import load_settings

    settings = load_settings({"runtime": runtime})
    configure_tensorflow(settings)
    import keras
    import tensorflow as tf  # noqa: F401 - imported as a worker has it before loading

    metadata = bare_metadata(folder, NAME, 1)
    if runtime == "keras":
        rt = ModelRuntime(folder, metadata)
    else:
        rt = serving.runtime_factory(settings)(folder, metadata)
    start = time.perf_counter()
    rt.load()
    total = time.perf_counter() - start
    start = time.perf_counter()  # the same file again, Keras alone: the share of the load
    keras.saving.load_model(folder / "model.keras", safe_mode=True, compile=False)
    keras_load = time.perf_counter() - start
    return {
        "seconds": total,
        "keras_load_seconds": keras_load,
        "engine": getattr(getattr(rt, "predictor", None), "name", None),
        "layers": len(rt.layer_names),
    }


def measure_load(folder: Path, runtime: str, rounds: int) -> list[dict]:
    out = []
    for _ in range(rounds):
        proc = subprocess.run(
            [sys.executable, "-m", "bench.byom", "--load-once", str(folder), "--runtime", runtime],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=1800,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        if proc.returncode != 0:
            raise RuntimeError(f"load run failed:\n{proc.stderr[-3000:]}")
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return out


def _timed(fn, repeats: int, warm: int = 3) -> list[float]:
    for _ in range(warm):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


def _row(label: str, times: list[float], note: str = "") -> str:
    q = statistics.quantiles(times, n=10) if len(times) >= 2 else [times[0]] * 9
    return (
        f"| {label} | {statistics.median(times):.1f} | {q[8]:.1f} | {min(times):.1f} | "
        f"{len(times)} | {note} |"
    )


def measure_requests(repo: Path, batch: int, repeats: int) -> tuple[list[str], dict]:
    import numpy as np

    from service import create_app

    app = create_app(
        {
            "model_repository": str(repo),
            "poll_interval": 0,
            "load_in_background": False,
            "runtime": "keras",
            "batching": False,
            "log_level": "warning",
        }
    )
    client = app.test_client()
    runtime = app.extensions["layerscope"].repository.get(NAME)
    shape = runtime.inputs[0]["shape"]
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch, *shape)).astype(np.float32)
    one = images[:1]
    layers = list(runtime.output_layer_names)

    rows = []
    rows.append(
        _row(
            "runtime.predict_outputs, 1 image",
            _timed(lambda: runtime.predict_outputs(one), repeats),
        )
    )
    rows.append(
        _row(
            f"runtime.predict_outputs, {batch} images",
            _timed(lambda: runtime.predict_outputs(images), repeats),
            f"{batch} images per call",
        )
    )
    rows.append(
        _row(
            "runtime.activations, every layer, 1 image",
            _timed(lambda: runtime.activations(one, layers), repeats),
            f"{len(layers)} layers, values in memory",
        )
    )
    body_one = {"instances": one.tolist()}

    def predict():
        r = client.post(f"/models/{NAME}/predict", json=body_one)
        assert r.status_code == 200, r.get_data(as_text=True)[:500]

    stats_body = {"instances": one.tolist(), "layers": layers, "include": ["stats"]}
    sizes = {}

    def activations():
        r = client.post(f"/models/{NAME}/activations", json=stats_body)
        assert r.status_code == 200, r.get_data(as_text=True)[:500]
        sizes["bytes"] = len(r.data)

    predict_times = _timed(predict, repeats)
    activation_times = _timed(activations, repeats)
    rows.append(_row("POST /predict, 1 image (WSGI test client)", predict_times, "JSON in and out"))
    rows.append(
        _row(
            'POST /activations, every layer, "include": ["stats"], 1 image',
            activation_times,
            f"{len(layers)} layers, {sizes['bytes'] / 1024:.0f} KiB of JSON",
        )
    )
    ratio = statistics.median(activation_times) / statistics.median(predict_times)
    return rows, {"layers": len(layers), "activations_over_predict": ratio}


def report(args) -> str:
    import tensorflow as tf

    from service import configure_tensorflow
    from service.settings import load_settings

    settings = load_settings()
    configure_tensorflow(settings)
    lines = []
    with tempfile.TemporaryDirectory(prefix="byom-") as tmp:
        repo = Path(tmp) / "models"
        info = build(repo, args.tiny)
        folder = repo / NAME / "1"
        size = "32 x 32, alpha 0.35" if args.tiny else "224 x 224, alpha 1.0"
        lines.append(f"## Bring your own model: keras.applications MobileNetV2 ({size})")
        lines.append("")
        lines.append(
            f"{info['params']:,} parameters, {info['layers']} layers, input {info['input']}, "
            f"model.keras {info['bytes'] / 1e6:.1f} MB, random weights (weights=None), a bare "
            f"version (model.keras only). TensorFlow {tf.__version__}, "
            f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
            f"intra-op threads {settings.intra_op_threads} (a worker's share: "
            f"{settings.workers} workers); load average at the start "
            f"{', '.join(f'{v:.1f}' for v in os.getloadavg())} (a shared machine: read p50 "
            "beside min)."
        )
        lines.append("")
        lines.append(
            "| load + warm-up (a fresh process each) | seconds | keras load_model alone "
            "(the same file, next) | engine |"
        )
        lines.append("|---|---|---|---|")
        runtimes = ["keras"] + (["auto"] if args.runtime == "auto" else [])
        for runtime in runtimes:
            for run in measure_load(folder, runtime, args.load_rounds):
                label = (
                    "ModelRuntime.load (TensorFlow)"
                    if runtime == "keras"
                    else "LAYERSCOPE_RUNTIME=auto (LiteRT conversion + parity gates)"
                )
                lines.append(
                    f"| {label} | {run['seconds']:.2f} | {run['keras_load_seconds']:.2f} | "
                    f"{run['engine']} |"
                )
        lines.append("")
        rows, extra = measure_requests(repo, args.batch, args.repeats)
        lines.append("| call | p50 ms | p90 ms | min ms | n | note |")
        lines.append("|---|---|---|---|---|---|")
        lines.extend(rows)
        lines.append("")
        lines.append(
            f"all-layer activations (stats only) / predict, through the app: "
            f"{extra['activations_over_predict']:.2f}x ({extra['layers']} layers)"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.byom", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--tiny", action="store_true", help="MobileNetV2 32x32 alpha 0.35 (smoke)")
    parser.add_argument("--batch", type=int, default=8, help="images in the batched predict")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per row")
    parser.add_argument("--load-rounds", type=int, default=2, help="fresh-process loads")
    parser.add_argument(
        "--runtime",
        choices=["keras", "auto"],
        default="keras",
        help="auto: also time the default runtime choice (LiteRT)",
    )
    parser.add_argument("--out", type=Path, help="also write the table here")
    parser.add_argument("--load-once", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    if args.load_once:
        print(json.dumps(load_once(args.load_once, args.runtime)))
        return 0
    text = report(args)
    sys.stdout.write(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
