"""The explorer page in headless Chromium against a real Gunicorn (2 workers) serving a tmp
repository with a tiny image model and a tiny tabular model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from bench.server import LayerscopeServer

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gunicorn")
    server = LayerscopeServer(
        repo,
        tmp,
        workers=2,
        threads=2,
        multiproc_dir=tmp / "prom",
        env={
            "LAYERSCOPE_POLL_INTERVAL": "0",
            "LAYERSCOPE_LOAD_IN_BACKGROUND": "false",  # a worker accepts only once loaded
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
            cards = page.locator("#layers .layer")
            names = [cards.nth(i).get_attribute("data-layer") for i in range(cards.count())]
            assert names == hidden["patch"]
            assert all(_canvas_drawn(page, "#layers .layer canvas"))
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
            cards = page.locator("#layers .layer")
            names = [cards.nth(i).get_attribute("data-layer") for i in range(cards.count())]
            assert names == hidden["txn"]
            assert all(_canvas_drawn(page, "#layers .layer canvas"))
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
