"""``python -m bench``: Layerscope against the naive server and the HTTP ceiling.

Starts each server in turn under the same Gunicorn settings (``service/gunicorn_conf.py``,
same workers and threads), drives it with ``wrk`` (or ``hey``) and prints a Markdown
report: latency percentiles and requests/s per model, mode and concurrency, the in-process
figures of the same runtime, and the ratios issue 6 sets as targets.

The machine is shared and noisy (one endpoint alone has drifted by 2x within half a
minute), so the servers of a comparison run side by side, their cells interleaved, and the
whole interleaved sequence is repeated ``--rounds`` times: each ratio is taken within a
round and the report gives the median round with every round's value beside it. See
docs/benchmarks.md."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench.load import LoadResult, Payload, run_load
from bench.server import children, free_port, rss_kb

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = ("fraud", "fashion", "mnist")
TINY_OVERRIDES = {
    "fraud": {"dataset.limit": 3000, "training.epochs": 2},
    "fashion": {"dataset.limit": 2000, "training.epochs": 1},
}
BATCH_ROWS = {"tabular": 256, "image": 64}


# -- models ---------------------------------------------------------------------------------
def latest_version(model_dir: Path) -> Path | None:
    versions = (
        [p for p in model_dir.iterdir() if p.name.isdigit() and (p / "metadata.json").is_file()]
        if model_dir.is_dir()
        else []
    )
    return max(versions, key=lambda p: int(p.name)) if versions else None


def prepare_repository(args, work: Path) -> Path:
    """A private repository holding the latest version of each benchmarked model."""
    repo = work / "models"
    repo.mkdir()
    if args.train_tiny:
        from training.train import train

        data_dir = os.environ.get("LAYERSCOPE_DATA_DIR", str(ROOT.parent / "shared" / "datasets"))
        for name in args.models:
            if name not in TINY_OVERRIDES:
                raise SystemExit(f"--train-tiny knows {sorted(TINY_OVERRIDES)}, not {name!r}")
            print(f"training a tiny {name} model ...", file=sys.stderr, flush=True)
            train(
                ROOT / "models" / name / "model.yaml",
                models_root=repo,
                data_dir=data_dir,
                overrides=TINY_OVERRIDES[name],
            )
        return repo
    source = Path(args.repository or os.environ.get("LAYERSCOPE_MODEL_REPOSITORY", "models"))
    for name in args.models:
        version = latest_version(source / name)
        if version is None:
            raise SystemExit(
                f"no published version of {name!r} in {source}: train it (python -m training "
                f"train models/{name}/model.yaml) or pass --train-tiny"
            )
        shutil.copytree(version, repo / name / version.name)
    return repo


@dataclass
class Model:
    name: str
    kind: str
    version_dir: Path
    single: bytes  # one instance
    batched: bytes  # BATCH_ROWS[kind] instances
    batched_binary: Payload  # the same rows as an OIP infer with binary tensor data
    batch_rows: int
    activations: bytes  # one instance, every hidden layer, values + stats
    activations_binary: Payload  # one instance, every hidden layer's values as OIP binary


def load_models(repo: Path) -> list[Model]:
    import numpy as np

    models = []
    for model_dir in sorted(p for p in repo.iterdir() if p.is_dir()):
        version = latest_version(model_dir)
        meta = json.loads((version / "metadata.json").read_text())
        kind = meta["input"].get("kind", "tabular")
        with np.load(version / "reference.npz") as ref:
            x = np.asarray(ref["x"], dtype=np.float32)
        if kind == "image":  # raw 0..255 pixels as integers, 28 x 28, as clients send them
            x = np.rint(x.reshape(len(x), *meta["input"]["shape"][:2])).astype(int)
        rows = BATCH_ROWS[kind]
        batch = np.concatenate([x] * (rows // len(x) + 1))[:rows].tolist()
        one = x[:1].tolist()
        models.append(
            Model(
                name=model_dir.name,
                kind=kind,
                version_dir=version,
                single=json.dumps({"instances": one}).encode(),
                batched=json.dumps({"instances": batch}).encode(),
                batched_binary=binary_infer(np.asarray(batch), kind),
                batch_rows=rows,
                activations=json.dumps({"instances": one, "include": ["values", "stats"]}).encode(),
                activations_binary=binary_layer_outputs(x[:1], meta),
            )
        )
    return models


def binary_layer_outputs(row, meta: dict) -> Payload:
    """An OIP infer of one JSON instance asking for every hidden layer and the prediction
    as binary tensor data (the layer_outputs extension): the activations a client that
    decodes arrays, not JSON lists, asks for."""
    import numpy as np

    hidden = [layer["name"] for layer in meta.get("layers") or [] if layer.get("hidden")]
    array = np.asarray(row, dtype=np.float32).reshape(1, *meta["input"]["shape"])
    request = {
        "inputs": [
            {
                "name": "input",
                "shape": list(array.shape),
                "datatype": "FP32",
                "data": array.ravel().tolist(),
            }
        ],
        "outputs": [
            {"name": name, "parameters": {"binary_data": True}} for name in [*hidden, "output"]
        ],
    }
    return Payload(json.dumps(request).encode())


def binary_infer(rows, kind: str) -> Payload:
    """An OIP infer body with binary tensor data: raw uint8 pixels for image models (what
    a camera or a decoded PNG gives), float32 features for tabular ones."""
    import numpy as np

    from service.binary_tensors import encode_request

    array = np.asarray(rows, dtype=np.uint8 if kind == "image" else np.float32)
    datatype = "UINT8" if kind == "image" else "FP32"
    request = {
        "inputs": [
            {
                "name": "input",
                "shape": list(array.shape),
                "datatype": datatype,
                "parameters": {"binary_data_size": array.nbytes},
            }
        ]
    }
    body, headers = encode_request(request, {"input": array})
    return Payload(body, "application/octet-stream", tuple(headers.items()))


# -- servers --------------------------------------------------------------------------------
@dataclass
class Server:
    label: str
    process: subprocess.Popen
    port: int
    log: Path
    rss_before: list[int] = field(default_factory=list)
    rss_after: list[int] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def workers(self) -> list[int]:
        return sorted(children(self.process.pid))

    def rss_kb(self) -> list[int]:
        return [kb for kb in map(rss_kb, self.workers()) if kb]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(
    label: str, app: str | None, env_extra: dict, args, work: Path, ready_path: str
) -> Server:
    """``app`` None: Layerscope through service/entrypoint.sh; else a WSGI target served
    by the same Gunicorn config."""
    port = free_port()
    env = {
        **os.environ,
        "LAYERSCOPE_HOST": "127.0.0.1",
        "LAYERSCOPE_PORT": str(port),
        "LAYERSCOPE_WORKERS": str(args.workers),
        "LAYERSCOPE_THREADS": str(args.threads),
        "LAYERSCOPE_LOG_LEVEL": "info",  # the default: access logs are part of the cost
        "PROMETHEUS_MULTIPROC_DIR": str(work / f"metrics-{port}"),
        "PYTHONPATH": str(ROOT),
        "CUDA_VISIBLE_DEVICES": "",
        "LAYERSCOPE_GRPC_PORT": "0",  # servers of one run must not share gRPC's default port
        **env_extra,
    }
    # entrypoint.sh makes it; a bare Gunicorn's workers need it too (connection gauges)
    (work / f"metrics-{port}").mkdir(parents=True, exist_ok=True)
    log = work / f"server-{port}.log"
    if app is None:
        cmd = ["sh", str(ROOT / "service" / "entrypoint.sh")]
    else:
        cmd = [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            str(ROOT / "service" / "gunicorn_conf.py"),
            app,
        ]
    with open(log, "wb") as fh:
        process = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(label, process, port, log)
    deadline, streak = time.time() + args.start_timeout, 0
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{label} exited with {process.returncode}:\n{tail(log)}")
        try:  # new connection each time: several 200s in a row = every worker is ready
            with urllib.request.urlopen(server.base + ready_path, timeout=5) as resp:
                ok = resp.status == 200 and len(server.workers()) >= args.workers
        except (urllib.error.URLError, OSError):
            ok = False
        streak = streak + 1 if ok else 0
        if streak >= 4 * args.workers:
            return server
        time.sleep(0.05 if ok else 0.5)
    server.stop()
    raise RuntimeError(f"{label} not ready after {args.start_timeout}s:\n{tail(log)}")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def warm(server: Server, url: str, body: bytes, args) -> None:
    """Every worker and thread has served the endpoint before anything is measured."""
    run_load(
        url,
        body,
        concurrency=max(4, args.workers * args.threads),
        seconds=args.warmup,
        generator=args.load_generator,
    )


# -- the run --------------------------------------------------------------------------------
@dataclass
class Row:
    model: str
    server: str
    request: str
    result: LoadResult
    rows: int = 1
    round: int = 0


@dataclass
class Spec:
    """A server to start: ``kind`` is layerscope, naive or ceiling."""

    label: str
    kind: str
    mode: tuple[str, str] | None = None


def layerscope_spec(mode: tuple[str, str]) -> Spec:
    return Spec(f"layerscope batching={mode[0]} runtime={mode[1]}", "layerscope", mode)


def start_spec(spec: Spec, repo: Path, args, work: Path) -> Server:
    if spec.kind == "ceiling":
        return start_server(spec.label, "bench.ceiling:app", {}, args, work, "/healthz")
    if spec.kind == "naive":
        return start_server(
            spec.label,
            "bench.naive:app",
            {"LAYERSCOPE_BENCH_REPOSITORY": str(repo)},
            args,
            work,
            "/healthz",
        )
    batching, runtime = spec.mode
    env = {
        "LAYERSCOPE_MODEL_REPOSITORY": str(repo),
        "LAYERSCOPE_POLL_INTERVAL": "0",
        "LAYERSCOPE_BATCHING": {"on": "true", "off": "false"}.get(batching, batching),
        "LAYERSCOPE_RUNTIME": runtime,
    }
    return start_server(spec.label, None, env, args, work, "/readyz")


def requests_for(
    spec: Spec, model: Model, args, default: bool
) -> list[tuple[str, str, bytes, list[int], int]]:
    """(request label, path, body, concurrency levels, rows per request) a server gets."""
    single_levels = sorted({*args.concurrency, 32}) if model.kind == "image" else args.concurrency
    if spec.kind == "ceiling":
        return [("single", "/predict", model.single, single_levels, 1)]
    if spec.kind == "naive" and args.smoke and model.kind != "tabular":
        return []  # the smoke keeps the slow naive server to the fraud comparison
    predict = f"/models/{model.name}/predict"
    out = [
        ("single", predict, model.single, single_levels, 1),
        (
            f"batch {model.batch_rows}",
            predict,
            model.batched,
            [args.batch_concurrency],
            model.batch_rows,
        ),
    ]
    if spec.kind == "layerscope" and default:
        out.append(
            (
                f"batch {model.batch_rows} binary",
                f"/v2/models/{model.name}/infer",
                model.batched_binary,
                [args.batch_concurrency],
                model.batch_rows,
            )
        )
        out.append(("activations", f"/models/{model.name}/activations", model.activations, [1], 1))
        out.append(
            (
                "activations binary",
                f"/v2/models/{model.name}/infer",
                model.activations_binary,
                [1],
                1,
            )
        )
    return out


def run_group(specs: list[Spec], models: list[Model], repo: Path, args, work: Path):
    """Start the servers of one comparison together and interleave their cells, so the
    ratios between them are measured side by side (the machine may be shared)."""
    servers: list[Server] = []
    rows: list[Row] = []
    extras: list[dict] = []
    try:
        for spec in specs:
            servers.append(start_spec(spec, repo, args, work))
        plans = {}
        for spec, server in zip(specs, servers, strict=True):
            default = spec.mode == args.modes[0]
            plans[spec.label] = {m.name: requests_for(spec, m, args, default) for m in models}
            for model in models:
                for _, path, body, _, _ in plans[spec.label][model.name]:
                    warm(server, server.base + path, body, args)
            server.rss_before = server.rss_kb()
        for round_ in range(args.rounds):
            for model, spec, server, request, path, body, c, nrows in schedule(
                specs, servers, plans, models
            ):
                result = run_load(
                    server.base + path,
                    body,
                    concurrency=c,
                    seconds=args.duration,
                    generator=args.load_generator,
                )
                rows.append(Row(model.name, spec.label, request, result, nrows, round_))
                print(
                    f"  round {round_ + 1}/{args.rounds} {spec.label:<38} {model.name:<8} "
                    f"{request:<12} c={c:<3} {result.rps:9.1f} req/s  p50 {result.p50_ms:7.3f} "
                    f"ms  p99 {result.p99_ms:7.3f} ms  errors {result.errors}",
                    file=sys.stderr,
                    flush=True,
                )
        for spec, server in zip(specs, servers, strict=True):
            if spec.kind != "layerscope":
                continue
            server.rss_after = server.rss_kb()
            described = {}
            for model in models:
                url = f"{server.base}/models/{model.name}"
                with urllib.request.urlopen(url, timeout=10) as resp:
                    described[model.name] = (json.load(resp).get("metadata") or {}).get("runtime")
            extras.append(
                {
                    "label": spec.label,
                    "rss_before": server.rss_before,
                    "rss_after": server.rss_after,
                    "runtimes": described,
                    "batching": batching_decisions(server.log),
                }
            )
    finally:
        for server in servers:
            server.stop()
    return rows, extras


def schedule(specs: list[Spec], servers: list[Server], plans: dict, models: list[Model]):
    """One round of cells in run order: for each model and (request, c), every server of
    the group that has that cell, in turn. Yields (model, spec, server, request, path,
    body, c, rows per request)."""
    for model in models:
        for request, c in cell_order(specs, plans, model):
            for spec, server in zip(specs, servers, strict=True):
                for label, path, body, levels, nrows in plans[spec.label][model.name]:
                    if label == request and c in levels:
                        yield model, spec, server, request, path, body, c, nrows


def cell_order(specs: list[Spec], plans: dict, model: Model) -> list[tuple[str, int]]:
    """(request, c) in a stable order, each run on every server in turn. Activations come
    right after the single-row c1 cell they are compared with, so they are measured
    seconds apart, not minutes."""
    cells: list[tuple[str, int]] = []
    for spec in specs:
        for request, _, _, levels, _ in plans[spec.label][model.name]:
            cells += [(request, c) for c in levels if (request, c) not in cells]
    if ("single", 1) in cells:
        for cell in reversed(ACTIVATION_CELLS):
            if cell in cells:
                cells.remove(cell)
                cells.insert(cells.index(("single", 1)) + 1, cell)
    return cells


ACTIVATION_CELLS = [("activations", 1), ("activations binary", 1)]


def compare(label: str, ours: dict, other: dict, metric, target: str) -> list[str]:
    """The targets-table line of a ratio whose two sides were both measured, else none."""
    return [check(label, per_round(ours, other, metric), target)] if ours and other else []


def batching_decisions(log: Path) -> dict[str, str]:
    """What each model's batcher decided, from the workers' JSON log lines."""
    out: dict[str, str] = {}
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("logger") == "layerscope.batching":
            why = entry.get("decision") or {}
            text = "on" if why.get("batching") else "off"
            if "gain_at_16_rows" in why:
                text += (
                    f" (auto: single row {why['single_row_ms']} ms, "
                    f"16 rows {why['gain_at_16_rows']}x cheaper per row)"
                )
            out[str(entry.get("model"))] = text
    return out


def groups(args) -> list[list[Spec]]:
    """The default mode beside the HTTP ceiling and the naive server, then batching on
    beside off for each runtime."""
    first = [layerscope_spec(args.modes[0])]
    first += [Spec("HTTP ceiling (constant)", "ceiling")] if "ceiling" not in args.skip else []
    first += [Spec("naive (Flask + model.predict)", "naive")] if "naive" not in args.skip else []
    out = [first]
    for runtime in dict.fromkeys(m[1] for m in args.modes[1:]):
        specs = [layerscope_spec(m) for m in args.modes[1:] if m[1] == runtime]
        if len(specs) == 1 and runtime == args.modes[0][1]:
            first += specs  # its pair is the default mode: measure them side by side
        else:
            out.append(specs)
    return out


def run_inprocess(models: list[Model], runtimes: list[str], args) -> dict:
    out = {}
    env = {
        **os.environ,
        "LAYERSCOPE_WORKERS": str(args.workers),
        "CUDA_VISIBLE_DEVICES": "",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPATH": str(ROOT),
    }
    for model in models:
        for runtime in runtimes:
            cmd = [
                sys.executable,
                "-m",
                "bench.inprocess",
                str(model.version_dir),
                runtime,
                "--batch",
                str(model.batch_rows),
                "--seconds",
                str(max(1.0, args.duration)),
                "--callers",
                str(args.workers),
            ]
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"in-process {model.name} {runtime} failed:\n{proc.stderr}")
            out[(model.name, runtime)] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(
                f"  in-process {model.name} {runtime}: {out[(model.name, runtime)]}",
                file=sys.stderr,
                flush=True,
            )
    return out


# -- report ---------------------------------------------------------------------------------
def fmt(v: float, digits: int = 1) -> str:
    return "n/a" if v != v else f"{v:,.{digits}f}"


def find(rows: list[Row], model: str, server_prefix: str, request: str, c: int) -> dict:
    """``{round: Row}`` of one cell (empty if the cell was not run)."""
    return {
        row.round: row
        for row in rows
        if row.model == model
        and row.server.startswith(server_prefix)
        and row.request == request
        and row.result.concurrency == c
    }


def per_round(num: dict, den: dict, value) -> list[float]:
    """``value(num_row) / value(den_row)`` for each round both cells ran in."""
    return [value(num[r]) / value(den[r]) for r in sorted(num.keys() & den.keys())]


def rps(row: Row) -> float:
    return row.result.rps


def p50(row: Row) -> float:
    return row.result.p50_ms


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def check(name: str, values: list[float], target: str) -> str:
    """A row of the targets table: the median of the per-round ratios against ``target``
    (">= x" or "<= x"; NaN is never met), every round's value beside it."""
    value = median(values)
    op, bound = target.split()
    ok = value >= float(bound) if op == ">=" else value <= float(bound)
    verdict = "met" if ok else "**not met**"
    rounds = ", ".join(fmt(v, 2) for v in values) or "n/a"
    return f"| {name} | {fmt(value, 2)} | {rounds} | {target} | {verdict} |"


def bounds(rows: list[Row], inproc: dict, models: list[Model], args) -> list[str]:
    """What the HTTP ceiling allows: the highest value any Flask server under the same
    Gunicorn settings could reach on this machine, for the targets it limits.

    - Batched rows/s: a request of N rows costs the HTTP stack at least what a one-row
      request costs, so no server answers N-row requests faster than the ceiling answers
      one-row ones (side by side at the batched cells' concurrency).
    - Batching on / off: the batched server still parses every request, so it cannot
      outrun the ceiling; ceiling / batching-off bounds the ratio (medians of cells run in
      different groups, so not side by side).
    """
    lines = []
    runtime = args.modes[0][1]
    for model in models:
        f = inproc.get((model.name, runtime))
        ceiling = find(rows, model.name, "HTTP ceiling", "single", args.batch_concurrency)
        if f and ceiling:
            lines.append(
                bound_line(
                    f"{model.name} {model.batch_rows}-row requests: HTTP rows/s / in-process "
                    "rows/s",
                    [
                        ceiling[r].result.rps * model.batch_rows / f["batch_rows_per_s"]
                        for r in sorted(ceiling)
                    ],
                    ">= 0.6",
                    f"ceiling's one-row req/s at c{args.batch_concurrency} x "
                    f"{model.batch_rows} rows",
                )
            )
    img = next((m for m in models if m.kind == "image"), None)
    ceiling = find(rows, img.name, "HTTP ceiling", "single", 32) if img else {}
    for runtime in sorted({m[1] for m in args.modes}) if ceiling else []:
        off = find(rows, img.name, f"layerscope batching=off runtime={runtime}", "single", 32)
        if off:
            lines.append(
                bound_line(
                    f"{img.name} c32 ({runtime}): batching on / off req/s",
                    [
                        median([r.result.rps for r in ceiling.values()])
                        / median([r.result.rps for r in off.values()])
                    ],
                    ">= 2",
                    "ceiling c32 / batching off c32, medians",
                )
            )
    if not lines:
        return []
    return [
        "",
        "## Bounds set by the HTTP ceiling",
        "",
        "The most any Flask server under the same Gunicorn settings could reach here (see "
        "`bounds` in bench/run.py). A target above its bound cannot be met on this machine "
        "by any server of this kind.",
        "",
        "| ratio | bound | per round | target | bound from | reachable |",
        "|---|---:|---|---|---|---|",
        *lines,
    ]


def bound_line(name: str, values: list[float], target: str, source: str) -> str:
    """A row of the bounds table: the median bound, and whether the target lies within it."""
    value = median(values)
    op, limit = target.split()
    reachable = value >= float(limit) if op == ">=" else value <= float(limit)
    rounds = ", ".join(fmt(v, 2) for v in values)
    verdict = "yes" if reachable else "**no**"
    return f"| {name} | {fmt(value, 2)} | {rounds} | {target} | {source} | {verdict} |"


def http_table(rows: list[Row]) -> list[str]:
    """One line per cell: the median of each figure over the rounds, errors summed, and the
    spread of req/s between rounds."""
    cells: dict[tuple, list[Row]] = {}
    for row in rows:
        key = (row.model, row.server, row.request, row.result.concurrency)
        cells.setdefault(key, []).append(row)
    lines = []
    for (model, server, request, c), found in cells.items():
        figures = [r.result for r in found]
        rate = median([f.rps for f in figures])
        low, high = min(f.rps for f in figures), max(f.rps for f in figures)
        lines.append(
            f"| {model} | {server} | {request} | {c} | {fmt(rate)} | "
            f"{fmt(low, 0)}–{fmt(high, 0)} | {fmt(rate * found[0].rows, 0)} | "
            f"{fmt(median([f.p50_ms for f in figures]), 3)} | "
            f"{fmt(median([f.p90_ms for f in figures]), 3)} | "
            f"{fmt(median([f.p99_ms for f in figures]), 3)} | "
            f"{sum(f.errors for f in figures)} |"
        )
    return lines


def report(
    rows: list[Row], inproc: dict, extras: list[dict], models: list[Model], args, machine: dict
) -> str:
    lines = [
        "## Machine",
        "",
        f"- CPU: {machine['cpu']} ({machine['nproc']} cores visible), {machine['python']}",
        f"- load average before / after: {machine['load_before']} / {machine['load_after']}",
        f"- Gunicorn: {args.workers} workers x {args.threads} gthread threads for every server; "
        f"{args.load_generator} for {args.duration:g} s per cell, {args.rounds} round(s) of "
        "every comparison, interleaved",
        f"- command: `{machine['command']}`",
        f"- Layerscope settings from the environment: {environment_settings()}",
        "",
        f"## HTTP ({args.load_generator})",
        "",
        "Median over the rounds; `req/s range` is the lowest and highest round.",
        "",
        "| model | server / mode | request | c | req/s | req/s range | rows/s | p50 ms | "
        "p90 ms | p99 ms | errors |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *http_table(rows),
    ]
    lines += [
        "",
        "## In-process (same runtime, called directly)",
        "",
        "| model | runtime | single-row p50 ms | single-row p99 ms | single-row calls/s | "
        f"batched rows/s ({args.workers} callers) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for (name, runtime), f in inproc.items():
        lines.append(
            f"| {name} | {runtime} ({f['runtime']}) | {fmt(f['single_p50_ms'], 3)} | "
            f"{fmt(f['single_p99_ms'], 3)} | {fmt(f['single_rps'], 0)} | "
            f"{fmt(f['batch_rows_per_s'], 0)} (batch {f['batch']}) |"
        )
    default = "layerscope batching={} runtime={}".format(*args.modes[0])
    lines += [
        "",
        "## Targets (issue 6)",
        "",
        "Each ratio is taken within a round (the two cells ran side by side); `value` is the "
        "median round.",
        "",
        "| ratio | value | per round | target | verdict |",
        "|---|---:|---|---|---|",
    ]
    tab = next((m for m in models if m.kind == "tabular"), None)
    img = next((m for m in models if m.kind == "image"), None)

    if tab is not None:
        c16 = 16 if 16 in args.concurrency else max(args.concurrency)
        ours = find(rows, tab.name, default, "single", c16)
        for server, skip, target in (
            ("HTTP ceiling", "ceiling", ">= 0.7"),
            ("naive", "naive", ">= 30"),
        ):
            if skip in args.skip:
                continue  # not run (--skip): no verdict, rather than "not met"
            other = find(rows, tab.name, server, "single", c16)
            lines.append(
                check(
                    f"{tab.name} single-row c{c16}: Layerscope / {server}",
                    per_round(ours, other, rps),
                    target,
                )
            )
    if img is not None:
        for runtime in sorted({m[1] for m in args.modes}):
            on, off = (f"layerscope batching={b} runtime={runtime}" for b in ("on", "off"))
            lines += compare(
                f"{img.name} c32 ({runtime}): batching on / off req/s",
                find(rows, img.name, on, "single", 32),
                find(rows, img.name, off, "single", 32),
                rps,
                ">= 2",
            )
            lines += compare(
                f"{img.name} c1 ({runtime}): p99 batching on / off",
                find(rows, img.name, on, "single", 1),
                find(rows, img.name, off, "single", 1),
                lambda row: row.result.p99_ms,
                "<= 1.5",
            )
    for model in models:
        runtime = args.modes[0][1]
        f = inproc.get((model.name, runtime))
        for request, how in (("", "JSON"), (" binary", "OIP binary tensors")):
            row = find(
                rows,
                model.name,
                default,
                f"batch {model.batch_rows}{request}",
                args.batch_concurrency,
            )
            if f and row:
                lines.append(
                    check(
                        f"{model.name} {model.batch_rows}-row requests ({how}): HTTP rows/s / "
                        "in-process rows/s",
                        [row[r].result.rps * model.batch_rows / f["batch_rows_per_s"] for r in row],
                        ">= 0.6",
                    )
                )
    for model in models:
        pred = find(rows, model.name, default, "single", 1)
        for request, how in (
            ("activations", "JSON values + stats"),
            ("activations binary", "OIP binary values"),
        ):
            lines += compare(
                f"{model.name} all-hidden-layer activations ({how}) / predict (p50, c1)",
                find(rows, model.name, default, request, 1),
                pred,
                p50,
                "<= 1.5",
            )
    lines += bounds(rows, inproc, models, args)
    lines += [
        "",
        "## Worker memory (VmRSS from /proc, MiB per worker)",
        "",
        "| server | after warm-up | after the load | growth |",
        "|---|---|---|---:|",
    ]
    for extra in extras:
        before, after = extra.get("rss_before") or [], extra.get("rss_after") or []
        if before and after:
            growth = (sum(after) - sum(before)) / sum(before) * 100
            lines.append(
                f"| {extra['label']} | {', '.join(f'{b / 1024:.0f}' for b in before)} | "
                f"{', '.join(f'{a / 1024:.0f}' for a in after)} | {growth:+.1f} % |"
            )
    lines += [
        "",
        "## What each Layerscope server ran",
        "",
        "Runtime of plain predictions from `GET /models/{name}` (`metadata.runtime`), "
        "batching decision from the workers' logs (one line per worker and model; the "
        "last one shown).",
        "",
    ]
    for extra in extras:
        for name, described in (extra.get("runtimes") or {}).items():
            described = described if isinstance(described, dict) else {}
            runtime = described.get("predict", "tensorflow")
            activations = described.get("activations", "tensorflow")
            decision = (extra.get("batching") or {}).get(name, "n/a")
            lines.append(
                f"- {extra['label']}, {name}: runtime {runtime} (activations {activations}), "
                f"batching {decision}"
            )
    return "\n".join(lines) + "\n"


# set by the bench for every Layerscope server (per mode or from the arguments)
BENCH_SET = {"HOST", "PORT", "WORKERS", "THREADS", "LOG_LEVEL", "MODEL_REPOSITORY",
             "POLL_INTERVAL", "BATCHING", "RUNTIME", "DATA_DIR"}  # fmt: skip


def environment_settings() -> str:
    """LAYERSCOPE_* variables the servers inherit from the bench's environment (e.g.
    LAYERSCOPE_ACTIVATION_PARITY=layer-scaled), so a report says what it ran with."""
    own = sorted(
        f"`{k}={v}`"
        for k, v in os.environ.items()
        if k.startswith("LAYERSCOPE_") and k.removeprefix("LAYERSCOPE_") not in BENCH_SET
    )
    return ", ".join(own) or "none (the service defaults)"


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def service_default(field: str):
    """A Layerscope setting's default (not the environment's value): the servers are
    compared as the service ships."""
    from service.settings import Settings

    return Settings.model_fields[field].default


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--models",
        default=None,
        help="comma-separated (default: fraud,fashion,mnist where published)",
    )
    parser.add_argument(
        "--repository",
        default=None,
        help="model repository (default: $LAYERSCOPE_MODEL_REPOSITORY or models/)",
    )
    parser.add_argument(
        "--train-tiny",
        action="store_true",
        help="train tiny fraud + fashion models into a temporary repository",
    )
    parser.add_argument(
        "--duration", type=float, default=4.0, help="seconds of load per cell and round"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="times every comparison is repeated, interleaved; ratios are per round",
    )
    parser.add_argument(
        "--load-generator",
        choices=("wrk", "hey"),
        default="wrk",
        help="wrk (default: microsecond latencies, little CPU) or hey (0.1 ms steps)",
    )
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--batch-concurrency", type=int, default=4)
    parser.add_argument(
        "--modes",
        default="auto:auto,on:litert,off:litert,on:keras,off:keras",
        help="Layerscope modes batching:runtime (batching auto/on/off, runtime "
        "auto/litert/keras); the first is the default mode",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--threads",
        type=int,
        default=service_default("threads"),
        help="gthread threads per worker for every server (default: the service's default)",
    )
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--skip", default="", help="comma-separated: naive,ceiling,inprocess")
    parser.add_argument("--start-timeout", type=float, default=180.0)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="CI: about 10 s of load in total (short cells, c 1 and 16)",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    args.modes = [tuple(m.split(":", 1)) for m in args.modes.split(",") if m]
    args.skip = {s for s in args.skip.split(",") if s}
    if args.smoke:
        args.duration, args.warmup, args.rounds = 1.0, 1.0, 1  # wrk counts whole seconds
        args.concurrency = [1, 16]
        args.modes = [("on", "auto"), ("off", "auto")]
    if args.models:
        args.models = [m for m in args.models.split(",") if m]
    elif args.train_tiny:
        args.models = list(TINY_OVERRIDES)
    else:
        source = Path(args.repository or os.environ.get("LAYERSCOPE_MODEL_REPOSITORY", "models"))
        args.models = [m for m in DEFAULT_MODELS if latest_version(source / m)]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rounds < 1 or args.duration <= 0:
        print(
            f"--rounds must be >= 1 and --duration > 0. Received: rounds={args.rounds}, "
            f"duration={args.duration}",
            file=sys.stderr,
        )
        return 2
    if shutil.which(args.load_generator) is None:
        print(
            f"the load generator `{args.load_generator}` is missing: "
            f"apt-get install {args.load_generator}",
            file=sys.stderr,
        )
        return 2
    machine = {
        "cpu": cpu_model(),
        "nproc": os.cpu_count(),
        "load_before": load_average(),
        "python": f"Python {platform.python_version()}",
        "command": "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    with tempfile.TemporaryDirectory(prefix="layerscope-bench-") as tmp:
        work = Path(tmp)
        repo = prepare_repository(args, work)
        models = load_models(repo)
        rows, extras = [], []
        for group in groups(args):
            found, extra = run_group(group, models, repo, args, work)
            rows += found
            extras += extra
        inproc = {}
        if "inprocess" not in args.skip:
            inproc = run_inprocess(models, sorted({m[1] for m in args.modes}), args)
        machine["load_after"] = load_average()
        text = report(rows, inproc, extras, models, args, machine)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0 if all(row.result.errors == 0 for row in rows) else 1
