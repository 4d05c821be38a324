"""JSON request decoding, ordinary path against the simdjson shortcut, per model and body.

    python -m bench.decode [--repository models] [--repeat 5]

For each model's latest version: the bench's own bodies (one instance, and the batched
request of ``bench.run``) decoded by ``parse_json`` + ``get_instances`` +
``decode_for_model`` (orjson, then ``np.asarray``) and by ``inputs.fast_instances``
(service/numeric_json.py), best of ``--repeat`` timed loops, in microseconds per body.
Nothing but the decoder runs: no model, no HTTP.
"""

from __future__ import annotations

import argparse
import json
import os
import timeit
from pathlib import Path

import numpy as np

from bench.run import load_models
from service import inputs
from service.runtime import ModelRuntime

ROOT = Path(__file__).resolve().parents[1]
MAX_BATCH = 1024


def per_call_us(fn, repeat: int) -> float:
    """Best of ``repeat`` timed loops, each as long as ``timeit``'s autorange picks (≥ 0.2 s)."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    return min(timer.repeat(repeat, number)) / number * 1e6


def decoders(raw: bytes, runtime):
    """(the ordinary decoding of ``raw``, the shortcut's), each a no-argument call."""

    def ordinary():
        body = inputs.parse_json(raw)
        instances = inputs.get_instances(body, "instances", MAX_BATCH)
        return inputs.decode_for_model(instances, runtime, 10**7)

    def shortcut():
        return inputs.fast_instances(raw, runtime, MAX_BATCH, min_bytes=0)

    return ordinary, shortcut


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repository",
        type=Path,
        default=Path(os.environ.get("LAYERSCOPE_MODEL_REPOSITORY", ROOT / "models")),
    )
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    print("| model | body | bytes | ordinary µs | shortcut µs | ordinary / shortcut |")
    print("|---|---|---:|---:|---:|---:|")
    for model in load_models(args.repository):
        meta = json.loads((model.version_dir / "metadata.json").read_text())
        runtime = ModelRuntime(model.version_dir, meta)  # not loaded: the decoders read its spec
        bodies = (("1 instance", model.single), (f"{model.batch_rows} rows", model.batched))
        for label, raw in bodies:
            ordinary, shortcut = decoders(raw, runtime)
            fast = shortcut()
            if fast is None or not np.array_equal(fast, ordinary()):
                raise SystemExit(f"{model.name} {label}: the shortcut refused or differed")
            slow_us = per_call_us(ordinary, args.repeat)
            fast_us = per_call_us(shortcut, args.repeat)
            print(
                f"| {model.name} | {label} | {len(raw):,} | {slow_us:,.1f} | {fast_us:,.1f} | "
                f"{slow_us / fast_us:.2f} |"
            )
    print(
        f"\nBodies under inputs.FAST_INSTANCES_MIN_BYTES ({inputs.FAST_INSTANCES_MIN_BYTES}) "
        "take the ordinary path in the service."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
