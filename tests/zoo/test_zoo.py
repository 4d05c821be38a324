"""Issue 16's "Show it": the zoo (keras.applications MobileNetV2 and ResNet50 at 32 x 32, a
residual two-input tabular model, an Embedding + LSTM + GRU text model on int32 tokens, a
Sequential holding a functional backbone, a regression model, a three-head model and a
subclassed model), every one dropped BARE (only model.keras) into a repository served by
a real Gunicorn with 2 workers. For every model:

* every layer, nested ones too, is listed by GET /models/<name>/layers (compared with
  Keras' own bookkeeping, ``tests.zoo.expected.layer_names``);
* every layer's served activations (POST /models/<name>/activations, values) equal what
  Keras computes from the ORIGINAL model's own tensors (``tests.zoo.expected``, which
  never uses service.model_spec) within 1e-5 x max(1, |value|);
* ``tritonclient.http`` reads the OIP metadata, infers (one tensor per input, INT32 for
  tokens) and asks for hidden layers through ``outputs``;
* every layer's PNG picture decodes;
* the explorer page renders it in headless Chromium with no console errors;
* the subclassed model predicts and its introspection answers 422 saying why."""

from __future__ import annotations

import io
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from tests.zoo import builders, expected

GRAPH = builders.GRAPH_MODELS
MAX_VALUES = 1_500_000  # activation values per request, under the default 2,000,000 cap
CHROMIUM = "/usr/bin/chromium"


def _xs(model, sample) -> list[np.ndarray]:
    """The sample as one array per model input, in model.inputs order."""
    if isinstance(sample, dict):
        return [sample[t.name] for t in model.inputs]
    return [sample]


def _instances(sample) -> list:
    """Native JSON instances: rows, or objects keyed by input name."""
    if isinstance(sample, dict):
        n = len(next(iter(sample.values())))
        return [{k: v[i].tolist() for k, v in sample.items()} for i in range(n)]
    return sample.tolist()


def _own_outputs(model, sample) -> list[np.ndarray]:
    out = model(_xs(model, sample) if isinstance(sample, dict) else sample, training=False)
    return [np.asarray(keras.ops.convert_to_numpy(v)) for v in keras.tree.flatten(out)]


def _ok(r, status: int = 200):
    assert r.status_code == status, f"{r.request.method} {r.url} -> {r.status_code}: {r.text[:800]}"
    return r.json() if "json" in r.headers.get("Content-Type", "") else r


def _layers(zoo_server, name: str) -> dict:
    return _ok(zoo_server.get(f"/models/{name}/layers"))


@pytest.mark.parametrize("name", GRAPH)
def test_every_layer_is_listed(zoo, zoo_server, name):
    model, _ = zoo[name]
    table = _layers(zoo_server, name)["layers"]
    served = [row["name"] for row in table]
    want = expected.layer_names(model)
    assert sorted(served) == sorted(want), {
        "missing": sorted(set(want) - set(served)),
        "extra": sorted(set(served) - set(want)),
    }
    assert len(served) == len(set(served))
    nested = [row for row in table if "/" in row["name"]]
    if name == "sequential":
        assert {row["parent"] for row in nested} == {"backbone"}
        assert "backbone/conv" in served and "backbone" in served
    if name == "tabular":
        assert {"shared", "shared@1", "residual_a", "gated", "merged"} <= set(served)
    if name == "text":
        assert {"embedding", "lstm", "gru", "gru:sequence"} <= set(served)
    if name in ("mobilenet", "resnet"):
        assert len(served) == len(model.layers)  # no nesting: one row per Keras layer
    rows = {row["name"]: row for row in table}
    for spec in model.outputs:
        row = rows[spec._keras_history[0].name]
        assert row["role"] == "output", row


def _chunks(table: list[dict], names: list[str], rows: int) -> list[list[str]]:
    """Layer lists whose values stay under MAX_VALUES per request."""
    shapes = {row["name"]: row["output_shape"] for row in table}
    chunks: list[list[str]] = [[]]
    size = 0
    for name in names:
        values = rows * int(np.prod([d or 1 for d in shapes[name][1:]]))
        if chunks[-1] and size + values > MAX_VALUES:
            chunks.append([])
            size = 0
        chunks[-1].append(name)
        size += values
    return chunks


@pytest.mark.parametrize("name", GRAPH)
def test_every_layers_activations_equal_keras(zoo, zoo_server, name):
    model, sample = zoo[name]
    xs = _xs(model, sample)
    table = _layers(zoo_server, name)["layers"]
    names = [row["name"] for row in table]
    want = expected.activations(model, xs, names)
    bad = {}
    for chunk in _chunks(table, names, len(xs[0])):
        body = {"instances": _instances(sample), "layers": chunk, "include": ["values"]}
        got = _ok(zoo_server.post(f"/models/{name}/activations", json=body))
        assert got["layers"] == chunk
        for layer in chunk:
            values = np.asarray([inst["layers"][layer]["values"] for inst in got["instances"]])
            ok, worst = expected.close(values, want[layer])
            if not ok:
                bad[layer] = (worst, values.shape, want[layer].shape)
    assert not bad, f"layers off by more than 1e-5 x max(1, |value|) (ratio, shapes): {bad}"


def _datatype(dtype) -> str:
    return {"float32": "FP32", "int32": "INT32", "int64": "INT64"}[np.dtype(dtype).name]


@pytest.mark.parametrize("name", [*GRAPH, "subclassed"])
def test_tritonclient_infers_and_asks_for_hidden_layers(zoo, zoo_server, name):
    import tritonclient.http as triton

    model, sample = zoo[name]
    xs = _xs(model, sample)
    client = triton.InferenceServerClient(url=zoo_server.url.removeprefix("http://"))
    try:
        assert client.is_server_ready() and client.is_model_ready(name)
        meta = client.get_model_metadata(name)
        served_inputs = [i["name"] for i in meta["inputs"]]
        assert len(served_inputs) == len(xs)
        inputs = []
        for spec, x in zip(meta["inputs"], xs, strict=True):
            assert spec["datatype"] == _datatype(x.dtype), spec
            tensor = triton.InferInput(spec["name"], list(x.shape), spec["datatype"])
            tensor.set_data_from_numpy(x)  # binary tensor data (tritonclient's default)
            inputs.append(tensor)
        listed = [o["name"] for o in meta["outputs"]]
        outputs = listed[: len(model.outputs) if name != "subclassed" else 1]
        own = _own_outputs(model, sample)
        assert len(outputs) == len(own)
        hidden: list[str] = []
        if name != "subclassed":  # every other layer is an output too; ask for a spread
            others = [n for n in listed if n not in outputs]
            assert set(others) >= set(_layers(zoo_server, name)["hidden_layers"])
            hidden = sorted({others[0], others[len(others) // 2], others[-1]})
            hidden += [n for n in others if "/" in n or "@" in n or ":" in n][:3]
            hidden = list(dict.fromkeys(hidden))
        result = client.infer(
            name,
            inputs,
            outputs=[triton.InferRequestedOutput(n, binary_data=True) for n in outputs + hidden],
        )
        for out_name, want in zip(outputs, own, strict=True):
            ok, worst = expected.close(result.as_numpy(out_name), want)
            assert ok, (out_name, worst)
        want = expected.activations(model, xs, hidden) if hidden else {}
        for layer in hidden:
            got = result.as_numpy(layer)
            assert got is not None, layer
            ok, worst = expected.close(got, want[layer])
            assert ok, (layer, worst)
    finally:
        client.close()


@pytest.mark.parametrize("name", GRAPH)
def test_every_layers_picture_decodes(zoo, zoo_server, name):
    model, sample = zoo[name]
    one = {k: v[:1] for k, v in sample.items()} if isinstance(sample, dict) else sample[:1]
    table = _layers(zoo_server, name)["layers"]
    failures = {}
    for row in table:
        if row["role"] == "input":
            continue
        r = zoo_server.post(
            f"/models/{name}/layers/{row['name']}/picture.png",
            json={"instances": _instances(one)},
        )
        if r.status_code != 200 or r.headers.get("Content-Type") != "image/png":
            failures[row["name"]] = (r.status_code, r.text[:200])
            continue
        image = Image.open(io.BytesIO(r.content))
        image.load()
        assert image.format == "PNG" and image.width > 0 and image.height > 0
    assert not failures, failures


def test_subclassed_predicts_and_introspection_answers_422(zoo, zoo_server):
    model, sample = zoo["subclassed"]
    (want,) = _own_outputs(model, sample)
    got = _ok(zoo_server.post("/v1/models/subclassed:predict", json={"instances": sample.tolist()}))
    ok, worst = expected.close(np.asarray(got["predictions"]), want)
    assert ok, worst
    native = _ok(zoo_server.post("/models/subclassed/predict", json={"instances": sample.tolist()}))
    assert len(native["predictions"]) == len(sample)
    for method, path, body in (
        ("get", "/models/subclassed/layers", None),
        ("post", "/models/subclassed/activations", {"instances": sample.tolist()}),
        ("post", "/models/subclassed/layers/hidden/picture.png", {"instances": sample.tolist()}),
    ):
        r = getattr(zoo_server, method)(path, **({"json": body} if body else {}))
        assert r.status_code == 422, (path, r.status_code, r.text[:300])
        message = r.json()["error"]
        assert "subclassed" in message and "Functional or Sequential" in message, message
    listed = _ok(zoo_server.get("/models"))
    text = str(listed)
    assert "subclassed" in text and "unverified" in text  # bare: no checksum recorded


def test_both_workers_serve_every_model(zoo_server):
    from concurrent.futures import ThreadPoolExecutor

    assert len(zoo_server.worker_pids()) == 2
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: zoo_server.get("/readyz").json(), range(64)))
    pids = {a["pid"] for a in answers}
    assert pids == zoo_server.worker_pids(), pids
    for a in answers:
        assert set(a["models"]) == set(builders.ZOO) and all(a["models"].values()), a


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed")
def test_explorer_page_renders_every_model(zoo_server):
    from playwright.sync_api import sync_playwright

    from tests.introspection.test_ui import ARGS

    problems: dict[str, list[str]] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            for name in GRAPH:
                seen: list[str] = []
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.on(
                    "console", lambda m, s=seen: s.append(m.text) if m.type == "error" else None
                )
                page.on("pageerror", lambda e, s=seen: s.append(str(e)))
                page.on("requestfailed", lambda r, s=seen: s.append(f"failed {r.url}"))
                page.goto(f"{zoo_server.url}/ui?model={name}")
                page.wait_for_function(
                    "Number(document.body.dataset.runs || 0) > 0", timeout=120_000
                )
                hidden = _layers(zoo_server, name)["hidden_layers"]
                cards = page.locator("#layers .layer")
                drawn = [cards.nth(i).get_attribute("data-layer") for i in range(cards.count())]
                if drawn != hidden:
                    seen.append(f"layer cards {len(drawn)} != hidden layers {len(hidden)}")
                if page.locator("#status").get_attribute("class") == "error":
                    seen.append("status: " + page.locator("#status").inner_text())
                page.close()
                if seen:
                    problems[name] = seen
        finally:
            browser.close()
    assert not problems, problems
