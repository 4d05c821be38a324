"""gRPC beside REST, in one run against one server (docs/benchmarks.md, "gRPC"):

    python -m bench.grpc                      # latest fraud / fashion versions in models/
    python -m bench.grpc --duration 5 --rounds 2 --layouts   # + the layout comparison

Cells: single-row fraud predictions at c1 and c16 (REST JSON ``/models/fraud/predict``
and ``/v1/models/fraud:predict``, REST binary ``/v2/models/fraud/infer``, gRPC
``ModelInfer`` with raw contents, gRPC ``Predict``), 64-image fashion batches at c4, and
one fashion image with every hidden layer at c1 (REST binary, gRPC ModelInfer) against a
gRPC predict. REST load comes from wrk, gRPC load from h2load (nghttp2-client: the same
kind of C load generator, one connection per concurrent caller, one stream each); gRPC
answers are HTTP 200 whatever their status, so every gRPC cell is checked against the
server's own ``layerscope_grpc_requests_total`` (calls and OK calls).

``--layouts`` also measures the choice docs/grpc.md makes: gRPC inside each Gunicorn
worker on one SO_REUSEPORT port against a separate gRPC process (``python -m
service.grpc``, its own copy of the models) beside the workers: gRPC alone at c16, gRPC
and REST at c16 at the same time, and the memory of every serving process.

Without published versions in models/ the models are built at their model.yaml size with
random weights (the compute of a prediction does not depend on the weights)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests

from bench.load import LoadResult, Payload, run_wrk
from bench.server import LayerscopeServer, free_port, rss_kb, wait_for

ROOT = Path(__file__).resolve().parents[1]
OIP = "/inference.GRPCInferenceService/ModelInfer"
TFS = "/tensorflow.serving.PredictionService/Predict"


# -- models ---------------------------------------------------------------------------------
def prepare_repository(source: Path, work: Path) -> Path:
    """fraud and fashion: the latest published versions of ``source``, else built."""
    from bench.run import latest_version

    repo = work / "models"
    repo.mkdir(parents=True)
    for name, kind in (("fraud", "tabular"), ("fashion", "image")):
        version = latest_version(source / name)
        if version is not None:
            shutil.copytree(version, repo / name / version.name)
        else:
            print(f"no published {name}: building it untrained at its model.yaml size", flush=True)
            build_untrained(repo, name, kind)
    return repo


def build_untrained(repo: Path, name: str, kind: str) -> None:
    import keras
    import yaml

    from training.builder import build_model
    from training.publish import layer_table, stage_version

    keras.utils.set_random_seed(0)
    cfg = yaml.safe_load((ROOT / "models" / name / "model.yaml").read_text())
    rng = np.random.default_rng(0)
    if kind == "tabular":
        x = rng.normal(size=(256, 30)).astype(np.float32)
        model = build_model(cfg, input_shape=(30,), num_classes=2, adapt_data=x)
        features = ["Time", *[f"V{i}" for i in range(1, 29)], "Amount"]
        spec = {"kind": "tabular", "features": features, "shape": [30], "dtype": "float32"}
        extra = {
            "task": "binary_classification",
            "class_names": ["legit", "fraud"],
            "threshold": 0.5,
            "output": {"activation": "sigmoid", "units": 1},
        }
    else:
        x = rng.integers(0, 256, size=(64, 28, 28, 1)).astype(np.float32)
        model = build_model(cfg, input_shape=(28, 28, 1), num_classes=10)
        spec = {"kind": "image", "shape": [28, 28, 1], "dtype": "float32", "value_range": [0, 255]}
        extra = {
            "task": "multiclass_classification",
            "class_names": [f"class_{i}" for i in range(10)],
            "threshold": None,
            "output": {"activation": "softmax", "units": 10},
        }
    with stage_version(repo / name, name) as staged:
        model.save(staged.path / "model.keras")
        np.savez(staged.path / "reference.npz", x=x, y=np.zeros(len(x), np.int64))
        (staged.path / "history.json").write_text("{}")
        staged.metadata.update(
            format_version=1,
            config=cfg,
            dataset={"name": "random", "synthetic": True},
            splits={},
            metrics={},
            input=spec,
            layers=layer_table(model),
            **extra,
        )


def samples(repo: Path) -> dict[str, np.ndarray]:
    from bench.run import latest_version

    out = {}
    for name in ("fraud", "fashion"):
        with np.load(latest_version(repo / name) / "reference.npz") as ref:
            out[name] = np.asarray(ref["x"], np.float32)
    return out


# -- request bodies -----------------------------------------------------------------------------
def grpc_frame(message) -> bytes:
    """One gRPC message on the wire: uncompressed flag, 4-byte big-endian length, bytes."""
    data = message.SerializeToString()
    return b"\x00" + len(data).to_bytes(4, "big") + data


def oip_infer(model: str, x: np.ndarray, datatype: str = "FP32", outputs=()) -> bytes:
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="input", datatype=datatype, shape=list(x.shape))
    request.raw_input_contents.append(
        x.astype(np.uint8 if datatype == "UINT8" else "<f4").tobytes()
    )
    for name in outputs:
        request.outputs.add(name=name)
    return grpc_frame(request)


def tfs_predict(model: str, x: np.ndarray) -> bytes:
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    dtype = types_pb2.DT_UINT8 if x.dtype == np.uint8 else types_pb2.DT_FLOAT
    request.inputs["input"].CopyFrom(
        tensor_pb2.TensorProto(
            dtype=dtype,
            tensor_shape=tensor_shape_pb2.TensorShapeProto(
                dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in x.shape]
            ),
            tensor_content=x.tobytes(),
        )
    )
    return grpc_frame(request)


def rest_binary(model: str, x: np.ndarray, datatype: str = "FP32", outputs=()) -> Payload:
    from service.binary_tensors import encode_request

    arr = x.astype(np.uint8 if datatype == "UINT8" else np.float32)
    request = {
        "inputs": [
            {
                "name": "input",
                "shape": list(arr.shape),
                "datatype": datatype,
                "parameters": {"binary_data_size": arr.nbytes},
            }
        ]
    }
    if outputs:
        request["outputs"] = [{"name": n, "parameters": {"binary_data": True}} for n in outputs]
    body, headers = encode_request(request, {"input": arr})
    return Payload(body, "application/octet-stream", tuple(headers.items()))


# -- h2load -------------------------------------------------------------------------------------
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def run_h2load(port: int, path: str, body: bytes, *, concurrency: int, seconds: float):
    """POST gRPC frames for ``seconds`` on ``concurrency`` HTTP/2 connections, one stream
    each (h2load; mean latency: h2load reports no percentiles)."""
    if shutil.which("h2load") is None:
        raise RuntimeError("the load generator `h2load` is missing: apt-get install nghttp2-client")
    with tempfile.NamedTemporaryFile(suffix=".grpc") as handle:
        handle.write(body)
        handle.flush()
        out = subprocess.run(
            [
                "h2load",
                "-t1",
                f"-c{concurrency}",
                "-m1",
                "-D",
                str(max(1, round(seconds))),
                "-d",
                handle.name,
                "-H",
                "content-type: application/grpc",
                "-H",
                "te: trailers",
                f"http://127.0.0.1:{port}{path}",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finished = re.search(r"finished in ([0-9.]+)s, ([0-9.]+) req/s", out)
    counts = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded", out)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+([0-9.]+)(us|ms|s)\b", out)
    if not (finished and counts and mean):
        raise RuntimeError(f"unexpected h2load output:\n{out[-2000:]}")
    done, ok = int(counts.group(2)), int(counts.group(3))
    return LoadResult(
        url=f"grpc:{path}",
        concurrency=concurrency,
        requests=done,
        rps=float(finished.group(2)),
        p50_ms=float(mean.group(1)) * _UNITS[mean.group(2)],  # the mean (see docstring)
        p90_ms=float("nan"),
        p99_ms=float("nan"),
        errors=done - ok,
    )


def grpc_counts(url: str) -> tuple[float, float]:
    """(calls, OK calls) in the server's layerscope_grpc_requests_total."""
    text = requests.get(url + "/metrics", timeout=10).text
    total = ok = 0.0
    for line in text.splitlines():
        if line.startswith("layerscope_grpc_requests_total{"):
            value = float(line.rsplit(" ", 1)[1])
            total += value
            ok += value if 'code="OK"' in line else 0.0
    return total, ok


# -- cells --------------------------------------------------------------------------------------
@dataclass
class Cell:
    group: str
    label: str
    kind: str  # "rest" or "grpc"
    target: str  # URL path
    body: object
    concurrency: int
    rows: int


def cells(x: dict[str, np.ndarray], layers: list[str]) -> list[Cell]:
    row = x["fraud"][:1]
    images = np.concatenate([x["fashion"]] * 64)[:64]
    pixels = np.rint(images).astype(np.uint8)
    one = x["fashion"][:1]
    single_json = json.dumps({"instances": row.tolist()}).encode()
    out = []
    for c in (1, 16):
        out += [
            Cell(
                "fraud single",
                "REST JSON /models/fraud/predict",
                "rest",
                "/models/fraud/predict",
                single_json,
                c,
                1,
            ),
            Cell(
                "fraud single",
                "REST JSON /v1/models/fraud:predict",
                "rest",
                "/v1/models/fraud:predict",
                single_json,
                c,
                1,
            ),
            Cell(
                "fraud single",
                "REST binary /v2/models/fraud/infer",
                "rest",
                "/v2/models/fraud/infer",
                rest_binary("fraud", row),
                c,
                1,
            ),
            Cell(
                "fraud single", "gRPC ModelInfer (raw)", "grpc", OIP, oip_infer("fraud", row), c, 1
            ),
            Cell("fraud single", "gRPC Predict", "grpc", TFS, tfs_predict("fraud", row), c, 1),
        ]
    image_json = json.dumps({"instances": pixels[..., 0].astype(int).tolist()}).encode()
    out += [
        Cell(
            "fashion 64 images",
            "REST JSON /models/fashion/predict",
            "rest",
            "/models/fashion/predict",
            image_json,
            4,
            64,
        ),
        Cell(
            "fashion 64 images",
            "REST binary UINT8",
            "rest",
            "/v2/models/fashion/infer",
            rest_binary("fashion", pixels, "UINT8"),
            4,
            64,
        ),
        Cell(
            "fashion 64 images",
            "gRPC ModelInfer UINT8 (raw)",
            "grpc",
            OIP,
            oip_infer("fashion", pixels, "UINT8"),
            4,
            64,
        ),
        Cell(
            "fashion 64 images",
            "gRPC Predict DT_UINT8",
            "grpc",
            TFS,
            tfs_predict("fashion", pixels),
            4,
            64,
        ),
        Cell(
            "fashion 1 image",
            "gRPC ModelInfer predict",
            "grpc",
            OIP,
            oip_infer("fashion", one),
            1,
            1,
        ),
        Cell(
            "fashion 1 image",
            "gRPC ModelInfer every hidden layer",
            "grpc",
            OIP,
            oip_infer("fashion", one, outputs=[*layers, "output"]),
            1,
            1,
        ),
        Cell(
            "fashion 1 image",
            "REST binary every hidden layer",
            "rest",
            "/v2/models/fashion/infer",
            rest_binary("fashion", one, outputs=[*layers, "output"]),
            1,
            1,
        ),
    ]
    return out


def run_cell(server, cell: Cell, seconds: float) -> LoadResult:
    if cell.kind == "rest":
        return run_wrk(
            server.url + cell.target, cell.body, concurrency=cell.concurrency, seconds=seconds
        )
    before = grpc_counts(server.url)
    result = run_h2load(
        server.grpc_port, cell.target, cell.body, concurrency=cell.concurrency, seconds=seconds
    )
    after = grpc_counts(server.url)
    calls, ok = after[0] - before[0], after[1] - before[1]
    # every answered call has a counted status: bad ones (not OK) count as errors
    result.errors += int(calls - ok)
    if ok == 0:
        raise RuntimeError(f"{cell.label}: no OK call (the server counted {calls:.0f} calls)")
    return result


class Server(LayerscopeServer):
    def __init__(self, repo: Path, work: Path, args, grpc: bool = True):
        self.grpc_port = free_port() if grpc else 0
        Path(work).mkdir(parents=True, exist_ok=True)
        super().__init__(
            repo,
            work,
            workers=args.workers,
            threads=args.threads,
            log_name="gunicorn-{port}.log",
            env={
                "LAYERSCOPE_GRPC_PORT": str(self.grpc_port),
                "LAYERSCOPE_POLL_INTERVAL": "0",
                "TF_CPP_MIN_LOG_LEVEL": "2",
                **dict(item.split("=", 1) for item in args.env),
            },
        )


def warm(server, cell: Cell) -> None:
    run_cell(server, Cell(**{**cell.__dict__, "concurrency": 1}), 1)


def table(rows: list[tuple[Cell, list[LoadResult]]]) -> list[str]:
    lines = [
        "| cell | request | c | req/s (median) | rounds | rows/s | p50 ms | p99 ms | errors |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for cell, results in rows:
        rps = sorted(r.rps for r in results)
        med = (
            rps[len(rps) // 2]
            if len(rps) % 2
            else sum(rps[len(rps) // 2 - 1 : len(rps) // 2 + 1]) / 2
        )
        last = results[-1]
        p50 = f"{last.p50_ms:.3f}" + (" (mean)" if cell.kind == "grpc" else "")
        p99 = "—" if cell.kind == "grpc" else f"{last.p99_ms:.3f}"
        lines.append(
            f"| {cell.group} | {cell.label} | {cell.concurrency} | {med:,.1f} | "
            f"{' / '.join(f'{r:,.0f}' for r in (x.rps for x in results))} | "
            f"{med * cell.rows:,.0f} | {p50} | {p99} | {sum(r.errors for r in results)} |"
        )
    return lines


def median_rps(rows, group: str, label: str, c: int) -> float:
    for cell, results in rows:
        if cell.group == group and cell.label == label and cell.concurrency == c:
            rps = sorted(r.rps for r in results)
            return rps[len(rps) // 2]
    raise KeyError(label)


def targets(rows) -> list[str]:
    out = []
    for target in (_fraud_target, _activation_target):
        with contextlib.suppress(KeyError):  # its cells were not run (--only)
            out += target(rows)
    return out


def _fraud_target(rows) -> list[str]:
    grpc16 = median_rps(rows, "fraud single", "gRPC ModelInfer (raw)", 16)
    tfs16 = median_rps(rows, "fraud single", "gRPC Predict", 16)
    json16 = median_rps(rows, "fraud single", "REST JSON /models/fraud/predict", 16)
    v1_16 = median_rps(rows, "fraud single", "REST JSON /v1/models/fraud:predict", 16)
    ratio = grpc16 / json16
    return [
        f"- fraud single c16: gRPC ModelInfer {grpc16:,.0f} req/s / REST JSON {json16:,.0f} = "
        f"**{ratio:.2f}x** (target >= 1.5x: {'met' if ratio >= 1.5 else 'NOT met'}); gRPC "
        f"Predict / REST JSON :predict {tfs16:,.0f} / {v1_16:,.0f} = {tfs16 / v1_16:.2f}x",
    ]


def _activation_target(rows) -> list[str]:
    predict = median_rps(rows, "fashion 1 image", "gRPC ModelInfer predict", 1)
    hidden = median_rps(rows, "fashion 1 image", "gRPC ModelInfer every hidden layer", 1)
    slow = predict / hidden
    return [
        f"- fashion, 1 image, every hidden layer over gRPC: {hidden:,.0f} req/s against "
        f"{predict:,.0f} for a gRPC predict = **{slow:.2f}x** the time (target <= 1.5x: "
        f"{'met' if slow <= 1.5 else 'NOT met'})",
    ]


# -- layouts ------------------------------------------------------------------------------------
def serving_rss(pids: list[int]) -> float:
    return sum(rss_kb(p) for p in pids) / 1024


def concurrent(server_url: str, grpc_port: int, rest_cell: Cell, grpc_cell: Cell, seconds: float):
    results: dict[str, LoadResult] = {}

    def rest():
        results["rest"] = run_wrk(
            server_url + rest_cell.target,
            rest_cell.body,
            concurrency=rest_cell.concurrency,
            seconds=seconds,
        )

    def grpc():
        results["grpc"] = run_h2load(
            grpc_port,
            grpc_cell.target,
            grpc_cell.body,
            concurrency=grpc_cell.concurrency,
            seconds=seconds,
        )

    threads = [threading.Thread(target=rest), threading.Thread(target=grpc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results["rest"], results["grpc"]


def layouts(repo: Path, work: Path, args, x) -> list[str]:
    row = x["fraud"][:1]
    rest_cell = Cell(
        "fraud",
        "REST JSON",
        "rest",
        "/models/fraud/predict",
        json.dumps({"instances": row.tolist()}).encode(),
        16,
        1,
    )
    grpc_cell = Cell("fraud", "gRPC ModelInfer", "grpc", OIP, oip_infer("fraud", row), 16, 1)
    out = [
        "| layout | gRPC alone c16 req/s | together: gRPC c16 req/s | together: REST JSON c16 "
        "req/s | RSS of the serving processes (MiB) |",
        "|---|---:|---:|---:|---:|",
    ]
    # (a) gRPC in every worker, one SO_REUSEPORT port
    with Server(repo, work / "layout-a", args) as a:
        a.wait_workers_ready(300)
        warm(a, grpc_cell)
        alone = [
            run_h2load(a.grpc_port, OIP, grpc_cell.body, concurrency=16, seconds=args.duration).rps
            for _ in range(args.rounds)
        ]
        rest, grpc = concurrent(a.url, a.grpc_port, rest_cell, grpc_cell, args.duration)
        rss = serving_rss(sorted(a.worker_pids()))
        out.append(
            f"| gRPC in each of {args.workers} workers (SO_REUSEPORT) | "
            f"{' / '.join(f'{r:,.0f}' for r in alone)} | {grpc.rps:,.0f} | {rest.rps:,.0f} | "
            f"{rss:,.0f} |"
        )
    # (b) a separate gRPC process beside Gunicorn (gRPC off in the workers)
    (work / "layout-b").mkdir(exist_ok=True)
    with Server(repo, work / "layout-b", args, grpc=False) as b:
        b.wait_workers_ready(300)
        port = free_port()
        env = {**b.env, "LAYERSCOPE_GRPC_PORT": str(port), "LAYERSCOPE_PORT": str(free_port())}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        log = open(work / "layout-b" / "grpc-process.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.grpc"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            import tritonclient.grpc as tg

            def ready():
                try:
                    return tg.InferenceServerClient(f"127.0.0.1:{port}").is_server_ready()
                except Exception:
                    return False

            wait_for(ready, 300, 0.5, "the separate gRPC process")
            run_h2load(port, OIP, grpc_cell.body, concurrency=1, seconds=1)
            alone = [
                run_h2load(port, OIP, grpc_cell.body, concurrency=16, seconds=args.duration).rps
                for _ in range(args.rounds)
            ]
            rest, grpc = concurrent(b.url, port, rest_cell, grpc_cell, args.duration)
            rss = serving_rss([*sorted(b.worker_pids()), proc.pid])
            out.append(
                f"| a separate gRPC process beside {args.workers} HTTP-only workers | "
                f"{' / '.join(f'{r:,.0f}' for r in alone)} | {grpc.rps:,.0f} | "
                f"{rest.rps:,.0f} | {rss:,.0f} |"
            )
        finally:
            proc.terminate()
            proc.wait(30)
            log.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repository",
        type=Path,
        default=Path(os.environ.get("LAYERSCOPE_MODEL_REPOSITORY", "models")),
    )
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--layouts", action="store_true", help="also compare the two layouts")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    parser.add_argument("--only", default="", help="cells whose group contains this text")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for the servers, e.g. LAYERSCOPE_ACTIVATION_PARITY=layer-scaled",
    )
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-grpc-") as tmp:
        work = Path(tmp)
        repo = prepare_repository(args.repository, work)
        x = samples(repo)
        with Server(repo, work / "main", args) as server:
            server.wait_workers_ready(300)
            meta = requests.get(server.url + "/v2/models/fashion", timeout=10).json()
            layers = [o["name"] for o in meta["outputs"] if o["name"] != "output"]
            plan = [c for c in cells(x, layers) if not args.only or args.only in c.group]
            for cell in plan:
                warm(server, cell)
            results: dict[int, list[LoadResult]] = {i: [] for i in range(len(plan))}
            for _ in range(args.rounds):  # rounds interleave the cells
                for i, cell in enumerate(plan):
                    results[i].append(run_cell(server, cell, args.duration))
            rows = [(cell, results[i]) for i, cell in enumerate(plan)]
        report = [
            f"gRPC bench: {args.workers} workers x {args.threads} threads, {args.duration:g} s "
            f"per cell, {args.rounds} rounds, {os.cpu_count()} cores"
            + (f", {' '.join(args.env)}" if args.env else ""),
            "",
            *table(rows),
            "",
            *targets(rows),
        ]
        if args.layouts:
            report += ["", *layouts(repo, work, args, x)]
        report.append(f"\n({time.monotonic() - started:.0f} s)")
    text = "\n".join(report)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
