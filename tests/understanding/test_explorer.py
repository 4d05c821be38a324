"""The explorer page shows what the layers learned, in headless Chromium against a real
Gunicorn: probes (polled through their 202s), a unit atlas opened by clicking a unit, a PCA
projection per hidden layer and the CKA comparison of the two-version CNN of
test_understanding.py; beside it a tabular model (its atlas as feature rows) and a bare
Embedding + LSTM model (its hidden state over time). No console errors, no 4xx / 5xx, and
every picture actually decoded (naturalWidth > 0)."""

from __future__ import annotations

import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
import requests

from bench.server import LayerscopeServer
from tests.introspection.helpers import (
    ARGS,
    CHROMIUM,
    FEATURES,
    publish,
    tabular_config,
    transactions,
)
from training.builder import build_model

from .test_understanding import repo  # noqa: F401  (the two-version CNN, 300-row references)

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing")


def _extra_models(root: Path) -> None:
    """txn: a published tabular model; seq: a bare Embedding + LSTM with a labelled sample;
    nest: a bare model holding a Sequential backbone, its reference sample without labels."""
    keras.utils.set_random_seed(0)
    tx, ty = transactions(600, seed=2)
    mlp = build_model(tabular_config(), input_shape=(30,), num_classes=2, adapt_data=tx)
    mlp.compile(keras.optimizers.Adam(0.01), "binary_crossentropy")
    mlp.fit(tx, ty, epochs=3, batch_size=64, verbose=0)
    publish(
        root,
        mlp,
        name="txn",
        task="binary_classification",
        class_names=["legit", "fraud"],
        input_spec={"kind": "tabular", "features": FEATURES, "shape": [30], "dtype": "float32"},
        ref_x=tx[:100],
        ref_y=ty[:100],
        config=tabular_config(),
        threshold=0.5,
    )
    tokens = keras.Input((6,), dtype="int32", name="tokens")
    h = keras.layers.Embedding(20, 4, name="embed")(tokens)
    h = keras.layers.LSTM(5, name="lstm")(h)
    seq = keras.Model(tokens, keras.layers.Dense(2, activation="softmax", name="out")(h))
    folder = root / "seq" / "1"
    folder.mkdir(parents=True)
    seq.save(folder / "model.keras")
    rng = np.random.default_rng(0)
    np.savez(folder / "reference.npz", x=rng.integers(1, 20, (30, 6)), y=np.arange(30) % 2)
    features = keras.Input((5,), name="features")
    backbone = keras.Sequential([keras.layers.Dense(6, activation="relu", name="inner")],
                                name="backbone")  # fmt: skip
    nest = keras.Model(features, keras.layers.Dense(1, name="score")(backbone(features)))
    folder = root / "nest" / "1"
    folder.mkdir(parents=True)
    nest.save(folder / "model.keras")
    np.savez(folder / "reference.npz", x=rng.normal(size=(20, 5)).astype(np.float32))


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("explorer")
    served = tmp / "models"
    shutil.copytree(repo, served)
    _extra_models(served)
    server = LayerscopeServer(
        served,
        tmp,
        workers=1,
        threads=4,
        multiproc_dir=tmp / "prom",
        env={
            "LAYERSCOPE_POLL_INTERVAL": "0",
            "LAYERSCOPE_LOAD_IN_BACKGROUND": "false",
            "LAYERSCOPE_CACHE_DIR": str(tmp / "cache"),
            # computed on the first request: the page sees 202s before the result
            "LAYERSCOPE_PROBES_ON_LOAD": "false",
        },
    ).start()
    try:
        try:
            server.wait_ready(180, interval=0.3, consecutive=2)
        except (RuntimeError, TimeoutError):
            pytest.fail(f"gunicorn did not become ready:\n{server.log_text()}")
        yield server.url
    finally:
        server.stop()


@pytest.fixture()
def page(server):
    """A Chromium page on the server that records console errors, failed requests and every
    answer >= 400, and the status of each understanding call."""
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    statuses: list[tuple[str, int]] = []

    def answered(response):
        statuses.append((response.url.removeprefix(server), response.status))
        if response.status >= 400:
            problems.append(f"{response.status} {response.url}")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            pg = browser.new_page(viewport={"width": 1400, "height": 1000})
            pg.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            pg.on("pageerror", lambda e: problems.append(str(e)))
            pg.on("requestfailed", lambda r: problems.append(f"failed {r.url}"))
            pg.on("response", answered)
            pg.problems, pg.statuses = problems, statuses
            yield pg
        finally:
            browser.close()
    assert problems == []


def _wait_run(page, after: int = 0) -> None:
    page.wait_for_function(f"Number(document.body.dataset.runs || 0) > {after}", timeout=90_000)


def _loaded(page, selector: str) -> list[int]:
    """naturalWidth of every image the selector matches."""
    return page.evaluate(
        "(s) => [...document.querySelectorAll(s)].map((i) => i.complete ? i.naturalWidth : 0)",
        selector,
    )


def _wait_images(page, selector: str, count: int = 1, timeout: int = 180_000) -> None:
    page.wait_for_function(
        """([s, n]) => { const imgs = [...document.querySelectorAll(s)];
            return imgs.length >= n && imgs.every((i) => i.complete && i.naturalWidth > 0); }""",
        arg=[selector, count],
        timeout=timeout,
    )


def _hidden(server, model, version=None) -> list[str]:
    path = f"/models/{model}" + (f"/versions/{version}" if version else "")
    return requests.get(f"{server}{path}/layers", timeout=10).json()["hidden_layers"]


def _rows(page, selector: str) -> list[list[str]]:
    return page.evaluate(
        """(s) => [...document.querySelectorAll(s)].map(
            (tr) => [...tr.children].map((td) => td.textContent))""",
        selector,
    )


def test_probes_atlas_projection_and_comparison_of_the_cnn(server, page):
    page.goto(f"{server}/ui?model=patch")
    _wait_run(page)
    hidden = _hidden(server, "patch")

    # probes: one block per ready version (newest first), chart decoded, a table row per
    # hidden layer after the raw input's baseline; the page polled through the 202s
    page.wait_for_function(
        "document.querySelectorAll('#probes .probe-block[data-ready=\"1\"]').length === 2",
        timeout=240_000,
    )
    blocks = page.locator("#probes .probe-block")
    assert [blocks.nth(i).get_attribute("data-version") for i in range(2)] == ["2", "1"]
    _wait_images(page, "#probes img.probe-chart", 2)
    for version in (2, 1):
        body = requests.get(f"{server}/models/patch/versions/{version}/probes", timeout=10).json()
        rows = _rows(page, f'#probes .probe-block[data-version="{version}"] tbody tr')
        layers = page.evaluate(
            "(s) => [...document.querySelectorAll(s)].map((tr) => tr.dataset.layer)",
            f'#probes .probe-block[data-version="{version}"] tbody tr',
        )
        assert layers == ["input (raw)", *hidden]
        sketched = [r["layer"] for r in body["layers"] if r["projected_from"]]
        marked = [name for r, name in zip(rows[1:], hidden, strict=True) if "sketched" in r[0]]
        assert sketched and marked == sketched
        assert rows[0][1] == f"{body['baseline']['mean']:.3f} ± {body['baseline']['std']:.3f}"
        last = body["layers"][-1]
        assert rows[-1][1] == f"{last['mean']:.3f} ± {last['std']:.3f}"
    probes = [s for u, s in page.statuses if u.endswith("/probes")]
    assert 202 in probes and probes.count(200) == 2, probes

    # unit atlas: click a top unit of the first convolution's statistics
    conv = next(n for n in hidden if n.startswith("conv2d"))
    card = page.locator(f'#layers .layer[data-layer="{conv}"]')
    button = card.locator(".layer-stats button.unit").first
    unit = int(button.get_attribute("data-unit"))
    button.click()
    card.locator('.atlas[data-ready="1"]').wait_for(timeout=90_000)
    _wait_images(page, f'#layers .layer[data-layer="{conv}"] .atlas img.atlas-thumbs')
    served = requests.get(
        f"{server}/models/patch/versions/2/layers/{conv}/units/{unit}/top?n=9", timeout=30
    ).json()
    rows = _rows(page, f'#layers .layer[data-layer="{conv}"] .atlas tbody tr')
    assert [r[0] for r in rows] == [f"#{t['index']}" for t in served["top"]]
    assert [r[2] for r in rows] == [t["label"] for t in served["top"]]
    assert len(rows) == 9 and f"unit {unit}" in card.locator(".atlas-head").inner_text()

    # ... or a unit index typed on a dense card, by max
    dense = [n for n in hidden if n.startswith("dense")][-1]
    card = page.locator(f'#layers .layer[data-layer="{dense}"]')
    card.locator("input.unit-index").fill("1")
    card.locator("button.atlas-open").click()
    card.locator('.atlas[data-ready="1"]').wait_for(timeout=90_000)
    assert "unit 1" in card.locator(".atlas-head").inner_text()
    assert len(_rows(page, f'#layers .layer[data-layer="{dense}"] .atlas tbody tr')) == 9

    # projection: lazy, behind a toggle on each hidden card
    assert page.locator("#layers .projection-toggle").count() == len(hidden)
    others = page.locator("#pre-layers .projection-toggle, #out-layers .projection-toggle")
    assert others.count() == 0
    assert not [s for u, s in page.statuses if "/projection" in u]  # nothing asked yet
    card.locator(".projection-toggle").click()
    card.locator('.projection[data-loaded="1"]').wait_for(timeout=90_000)
    _wait_images(page, f'#layers .layer[data-layer="{dense}"] img.projection-chart')
    info = card.locator(".projection-info").inner_text()
    ratio = requests.get(
        f"{server}/models/patch/versions/2/layers/{dense}/projection", timeout=30
    ).json()["explained_variance_ratio"]
    assert f"PC1 {100 * ratio[0]:.1f}%" in info and f"PC2 {100 * ratio[1]:.1f}%" in info
    card.locator(".projection-toggle").click()
    assert not card.locator(".projection").is_visible()

    # comparison: v1 against v2 by default, the heat map and a row per layer of a
    assert page.locator("#compare-panel").is_visible()
    page.locator('#compare[data-ready="1"]').wait_for(timeout=120_000)
    _wait_images(page, "#compare img.compare-chart")
    assert page.locator("#compare-a").input_value() == "1"
    assert page.locator("#compare-b").input_value() == "2"
    served = requests.get(f"{server}/models/patch/compare?a=1&b=2", timeout=60).json()
    rows = _rows(page, "#compare .compare-table tbody tr")
    assert [r[0] for r in rows] == served["layers_a"]
    assert rows[0][1] == f"{served['cka'][0][0]:.3f}"
    # a version against itself: CKA 1 on the diagonal
    page.select_option("#compare-a", "2")
    page.wait_for_function(
        "document.querySelector('#compare-a').value === '2' && "
        "document.querySelector('#compare').dataset.ready === '1'",
        timeout=120_000,
    )
    rows = _rows(page, "#compare .compare-table tbody tr")
    assert {r[1] for r in rows} == {"1.000"}
    _wait_images(page, "#compare img.compare-chart")
    page.screenshot(path="/tmp/ui_understanding.png", full_page=True)
    assert page.locator("#status").get_attribute("class") != "error"


def test_tabular_atlas_rows_and_recurrent_hidden_state(server, page):
    page.goto(f"{server}/ui?model=txn")
    _wait_run(page)
    # one version: probes, no comparison
    page.locator('#probes .probe-block[data-ready="1"]').wait_for(timeout=240_000)
    _wait_images(page, "#probes img.probe-chart")
    assert not page.locator("#compare-panel").is_visible()
    hidden = _hidden(server, "txn")
    card = page.locator(f'#layers .layer[data-layer="{hidden[0]}"]')
    card.locator(".layer-stats button.unit").first.click()
    card.locator('.atlas[data-ready="1"]').wait_for(timeout=90_000)
    assert card.locator(".atlas img").count() == 0  # no image input: feature rows
    heads = page.evaluate(
        """(l) => [...document.querySelectorAll(
            `#layers .layer[data-layer="${l}"] .atlas thead th`)].map((th) => th.textContent)""",
        hidden[0],
    )
    assert heads == ["sample", "activation", "label", *FEATURES]
    assert len(_rows(page, f'#layers .layer[data-layer="{hidden[0]}"] .atlas tbody tr')) == 9

    # a bare LSTM: its hidden states over time are labelled so; its last state is not
    runs = int(page.evaluate("Number(document.body.dataset.runs || 0)"))
    page.select_option("#model", "seq")
    _wait_run(page, runs)
    sequence = page.locator('#layers .layer[data-layer="lstm:sequence"]')
    assert "hidden state over time" in sequence.locator(".picture-caption").inner_text()
    assert page.locator('.layer[data-layer="lstm"] .picture-caption').count() == 0
    page.locator('#probes .probe-block[data-ready="1"]').wait_for(timeout=240_000)
    _wait_images(page, "#probes img.probe-chart")
    sequence.locator(".projection-toggle").click()
    sequence.locator('.projection[data-loaded="1"]').wait_for(timeout=90_000)
    assert all(_loaded(page, "#layers img.projection-chart"))
    page.screenshot(path="/tmp/ui_understanding_seq.png", full_page=True)

    # a nested layer (backbone/inner) has its atlas and projection; no labels: no probes asked
    runs = int(page.evaluate("Number(document.body.dataset.runs || 0)"))
    page.select_option("#model", "nest")
    _wait_run(page, runs)
    assert "no labels" in page.locator("#probes .probe-block").inner_text()
    card = page.locator('#layers .layer[data-layer="backbone/inner"]')
    card.locator("input.unit-index").fill("5")
    card.locator("button.atlas-open").click()
    card.locator('.atlas[data-ready="1"]').wait_for(timeout=90_000)
    assert len(_rows(page, '#layers .layer[data-layer="backbone/inner"] .atlas tbody tr')) == 9
    card.locator(".projection-toggle").click()
    card.locator('.projection[data-loaded="1"]').wait_for(timeout=90_000)
    _wait_images(page, '#layers .layer[data-layer="backbone/inner"] img.projection-chart')
    asked = [u for u, _ in page.statuses if "/models/nest/" in u and u.endswith("/probes")]
    assert asked == []
