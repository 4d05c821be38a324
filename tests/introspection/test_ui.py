"""The explorer page in headless Chromium against a real Gunicorn (2 workers) serving a tmp
repository with a tiny image model and a tiny tabular model (published by our pipeline)
and the bring-your-own models of byom_models.py dropped in bare: a CNN with a nested
backbone, an Embedding + LSTM text model, a two-input model, a regression model, a
two-output model and a subclassed model (predictions only)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from bench.server import LayerscopeServer

from .byom_models import save_zoo
from .helpers import ARGS, CHROMIUM


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gunicorn")
    served = tmp / "models"
    shutil.copytree(repo, served)
    save_zoo(served)
    server = LayerscopeServer(
        served,
        tmp,
        workers=2,
        threads=2,
        multiproc_dir=tmp / "prom",
        env={
            "LAYERSCOPE_POLL_INTERVAL": "0",
            "LAYERSCOPE_LOAD_IN_BACKGROUND": "false",  # a worker accepts only once loaded
            # the subclassed model's class, registered with Keras when imported
            "LAYERSCOPE_CUSTOM_OBJECTS_MODULES": json.dumps(["tests.introspection.byom_models"]),
        },
    ).start()
    try:
        try:
            server.wait_ready(180, interval=0.3, consecutive=4)
        except (RuntimeError, TimeoutError):
            pytest.fail(f"gunicorn did not become ready:\n{server.log_text()}")
        yield server.url
    finally:
        server.stop()


def _runs(page) -> int:
    return int(page.evaluate("Number(document.body.dataset.runs || 0)"))


def _wait_run(page, after: int) -> None:
    page.wait_for_function(f"Number(document.body.dataset.runs || 0) > {after}", timeout=60_000)


def _cards(page, where: str = "#output") -> list[str]:
    """Layer cards in page order: every one (#output), or the hidden layers' (#layers)."""
    cards = page.locator(f"{where} .layer")
    return [cards.nth(i).get_attribute("data-layer") for i in range(cards.count())]


def _computed(server, model) -> list[str]:
    """Every layer of the table but the inputs: the explorer draws a card for each."""
    body = requests.get(f"{server}/models/{model}", timeout=10).json()["metadata"]
    return [r["name"] for r in body["layers"] if r["role"] != "input"]


def _all_pictures_drawn(page) -> bool:
    return page.evaluate(
        """() => [...document.querySelectorAll('#output .layer canvas')].every(
            (c) => c.dataset.drawn === '1' && c.width > 0 && c.height > 0)"""
    )


def _canvas_drawn(page, selector: str) -> bool:
    """The canvas has a size and more than one colour."""
    return page.evaluate(
        """(sel) => [...document.querySelectorAll(sel)].map((c) => {
            if (!c.width || !c.height) return false;
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            const seen = new Set();
            for (let i = 0; i < d.length && seen.size < 2; i += 4) seen.add(d[i] + ',' + d[i+1]
                + ',' + d[i+2]);
            return seen.size > 1; })""",
        selector,
    )


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed")
def test_explorer_page_in_chromium(server, tmp_path):
    from playwright.sync_api import sync_playwright

    hidden = {
        m: requests.get(f"{server}/models/{m}/layers", timeout=10).json()["hidden_layers"]
        for m in ("patch", "txn")
    }
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("requestfailed", lambda r: problems.append(f"failed {r.url}"))
            page.goto(f"{server}/ui?model=patch")
            _wait_run(page, 0)

            # image model: prediction, one card per hidden layer, all drawn, Grad-CAM drawn
            assert page.locator("#prediction .pred-label").inner_text().split()[0] in (
                "empty",
                "patch",
            )
            assert _cards(page) == _computed(server, "patch")  # every layer, not only hidden
            assert _cards(page, "#layers") == hidden["patch"]  # the hidden ones in #layers
            assert _all_pictures_drawn(page)
            hidden_canvases = ", ".join(
                f'#layers .layer[data-layer="{n}"] canvas' for n in hidden["patch"]
            )
            assert all(_canvas_drawn(page, hidden_canvases))
            rows = page.locator("#layer-list tbody tr").count()
            assert rows == len(_computed(server, "patch")) + 1  # and the input
            assert _canvas_drawn(page, "#attribution") == [True]
            assert "Grad-CAM" in page.locator("#attr-method").inner_text()
            assert page.locator("#samples canvas").count() == 8

            # draw a stroke: the model reruns on the drawing
            box = page.locator("#draw").bounding_box()
            runs = _runs(page)
            page.mouse.move(box["x"] + 40, box["y"] + 40)
            page.mouse.down()
            page.mouse.move(box["x"] + 120, box["y"] + 60, steps=8)
            page.mouse.up()
            _wait_run(page, runs)
            page.locator("#samples canvas").nth(1).click()
            _wait_run(page, runs + 1)
            upload = tmp_path / "upload.png"  # a bright square, bottom right
            pixels = np.zeros((28, 28), np.uint8)
            pixels[17:24, 17:24] = 255
            Image.fromarray(pixels, "L").save(upload)
            page.set_input_files("#upload", str(upload))
            _wait_run(page, runs + 2)
            assert page.locator("#prediction .pred-label").inner_text().startswith("patch")
            page.locator("#samples canvas").nth(1).click()
            _wait_run(page, runs + 3)
            page.screenshot(path="/tmp/ui.png", full_page=True)

            # tabular model: pick a sample transaction, edit a feature, everything renders
            runs = _runs(page)
            page.select_option("#model", "txn")
            _wait_run(page, runs)
            assert page.locator("#features input").count() == 30
            assert _cards(page) == _computed(server, "txn")
            assert _cards(page, "#layers") == hidden["txn"]
            assert _all_pictures_drawn(page)
            hidden_canvases = ", ".join(
                f'#layers .layer[data-layer="{n}"] canvas' for n in hidden["txn"]
            )
            assert all(_canvas_drawn(page, hidden_canvases))
            assert "integrated gradients" in page.locator("#attr-method").inner_text()
            assert "completeness" in page.locator("#attr-info").inner_text()
            runs = _runs(page)
            page.fill("#features input[name=V1]", "4.5")
            page.locator("#features input[name=V1]").dispatch_event("change")
            _wait_run(page, runs)
            page.select_option("#sample-select", "2")
            _wait_run(page, runs + 1)
            page.screenshot(path="/tmp/ui_tabular.png", full_page=True)
            assert page.locator("#status").get_attribute("class") != "error"
        finally:
            browser.close()
    assert problems == []


def _select(page, model: str) -> None:
    runs = _runs(page)
    page.select_option("#model", model)
    _wait_run(page, runs)
    assert page.locator("#status").get_attribute("class") != "error", page.locator(
        "#status"
    ).inner_text()


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed")
def test_explorer_page_renders_bring_your_own_models(server):
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("requestfailed", lambda r: problems.append(f"failed {r.url}"))
            page.goto(f"{server}/ui?model=cnn")
            _wait_run(page, 0)

            # nested backbone: every layer listed (indented under its parent) and drawn
            assert _cards(page) == _computed(server, "cnn")
            assert "backbone/conv_b" in _cards(page) and _all_pictures_drawn(page)
            assert page.locator("#layer-list tbody tr").count() == len(_computed(server, "cnn")) + 1
            nested = page.locator('#layer-list tr[data-layer="backbone/conv_a"] .layer-name')
            assert int(nested.evaluate("(td) => parseInt(td.style.paddingLeft)")) > 4
            assert "Grad-CAM, layer backbone/conv_b" in page.locator("#attr-method").inner_text()
            assert _canvas_drawn(page, "#attribution") == [True]
            assert page.locator("#samples canvas").count() == 8
            assert not page.locator("#attr-controls").is_visible()  # one output: no choice
            page.screenshot(path="/tmp/ui_cnn.png", full_page=True)

            # text model: a token box, the LSTM's hidden states as a time x unit picture,
            # integrated gradients per token
            _select(page, "text")
            box = page.locator(".input-form[data-kind=sequence] textarea")
            assert box.count() == 1 and box.input_value() != ""
            assert "lstm:sequence" in _cards(page) and _all_pictures_drawn(page)
            sequence = page.locator('#layers .layer[data-layer="lstm:sequence"] canvas')
            assert sequence.evaluate("(c) => c.height") > 32  # time steps down, units across
            page.screenshot(path="/tmp/ui_text.png", full_page=True)
            assert "integrated gradients" in page.locator("#attr-method").inner_text()
            assert "completeness" in page.locator("#attr-info").inner_text()
            runs = _runs(page)
            box.fill("3, 7 12 9")
            box.dispatch_event("change")
            _wait_run(page, runs)
            assert "4 ×" not in page.locator("#status").inner_text()
            box.fill("3, seven")
            box.dispatch_event("change")
            page.wait_for_function("document.getElementById('status').className === 'error'")
            assert '"seven" is not an integer' in page.locator("#status").inner_text()

            # two inputs: one form each, a reference sample fills both
            _select(page, "two_in")
            forms = page.locator(".input-form")
            assert forms.count() == 2
            assert [forms.nth(i).get_attribute("data-input") for i in range(2)] == [
                "account",
                "usage",
            ]
            assert page.locator("#features-0 input").count() == 4
            assert page.locator("#features-1 input").count() == 3
            runs = _runs(page)
            page.select_option("#sample-select", "3")
            _wait_run(page, runs)
            assert "completeness" in page.locator("#attr-info").inner_text()

            # regression: the raw value, no reference sample (the forms start at zeros)
            _select(page, "reg")
            assert page.locator("#prediction .pred-value").inner_text().startswith("values [")
            assert _all_pictures_drawn(page)

            # two outputs: both predictions; the attribution follows the chosen output
            _select(page, "two_out")
            blocks = page.locator("#prediction .output-block")
            assert [blocks.nth(i).get_attribute("data-output") for i in range(2)] == [
                "churn",
                "spend",
            ]
            assert page.locator("#attr-controls").is_visible()
            runs = _runs(page)
            page.select_option("#attr-output", "spend")
            _wait_run(page, runs)
            assert "unit 0 of spend" in page.locator("#attr-info").inner_text()

            # subclassed: predictions only, said so, no introspection call made
            _select(page, "sub")
            assert "Introspection unavailable" in page.locator("#layers-note").inner_text()
            assert page.locator("#output .layer").count() == 0
            assert page.locator("#prediction .pred-label").count() == 1
            page.screenshot(path="/tmp/ui_byom.png", full_page=True)
        finally:
            browser.close()
    assert problems == []
