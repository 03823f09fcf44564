"""The app in a real browser (Debian's chromium, driven by Playwright): every tab for one model of each family,
layer and head changes, no exception on the page and no console error. Screenshots go to ``TRILENS_SCREENSHOTS``
(default: the test's temporary folder)."""

import io
import json
import os
import urllib.parse
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from app_driver import (
    app_command,
    browser_available,
    chromium,
    exceptions,
    free_port,
    open_page,
    pick,
    serve,
    settle,
)

from trilens.app.tabs import TITLES as TABS  # noqa: E402 - the registry the page draws its tabs from
MODELS = ("zoo:gpt", "zoo:bert", "zoo:t5")
ARCHITECTURES = {"zoo:gpt": "GPT2LMHeadModel", "zoo:bert": "BertForMaskedLM", "zoo:t5": "T5ForConditionalGeneration"}

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(browser_available() is not None, reason=f"browser test skipped: {browser_available()}")]


@pytest.fixture(scope="module")
def server():
    port = free_port()
    with serve(app_command("zoo:t5", port), port) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("TRILENS_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.mark.parametrize("model", MODELS)
def test_every_tab_in_a_real_browser(server, browser, model, tmp_path):
    for tab in TABS:
        page = open_page(browser, f"{server}/?" + urllib.parse.urlencode({"model": model, "tab": tab}))
        try:
            assert ARCHITECTURES[model] in page.locator("[data-testid='stSidebar']").inner_text()
            assert not exceptions(page), exceptions(page)
            if tab in ("Attention", "Attention over steps", "Attribution", "Patching", "Lens") or (tab == "Decoder lens" and model == "zoo:t5"):
                page.wait_for_selector(".js-plotly-plot", timeout=60_000)  # plotly paints after the script ends
            if tab == "Attention":
                settle(page, lambda: pick(page, "layer", "1"))
                settle(page, lambda: pick(page, "head", "2"))
                page.wait_for_function("() => document.querySelector('.st-key-attention-pattern')"
                                       "?.innerText.includes('layer 1, head 2')", timeout=60_000)
                assert "layer=1" in page.url and "head=2" in page.url  # the view can be shared
                assert not exceptions(page), exceptions(page)
            slug = "-".join(tab.lower().replace("&", "").split())
            page.screenshot(path=str(shots(tmp_path) / f"{model.split(':')[1]}-{slug}.png"),
                            full_page=True)
            assert not page.errors, page.errors
        finally:
            page.close()


def _download(page, key: str) -> bytes:
    """Click the download button with widget key ``key``; the file the browser saves."""
    with page.expect_download(timeout=60_000) as info:
        page.locator(f".st-key-{key} button").click()
    return Path(info.value.path()).read_bytes()


def test_downloads_hold_what_is_shown(server, browser):
    page = open_page(browser, f"{server}/?" + urllib.parse.urlencode({"model": "zoo:t5", "tab": "Attention",
                                                                       "layer": 1, "head": 2}))
    try:
        page.wait_for_selector(".js-plotly-plot", timeout=60_000)
        grid = pd.read_csv(io.BytesIO(_download(page, "dl-attention-grid-csv")))
        assert len(grid) == 6 * 4 and set(grid["layer"]) == set(range(6)) and set(grid["head"]) == set(range(4))
        pattern = pd.read_csv(io.BytesIO(_download(page, "dl-attention-csv")))
        assert set(pattern["layer"]) == {1} and set(pattern["head"]) == {2}
        n_tokens = pattern["query"].nunique()
        assert len(pattern) == n_tokens * pattern["key"].nunique()
        assert np.allclose(pattern.groupby("query")["weight"].sum(), 1.0, atol=1e-4)  # softmax rows
        as_json = json.loads(_download(page, "dl-attention-json"))
        assert len(as_json["rows"]) == len(pattern)
        html = _download(page, "dl-attention-html").decode()
        assert "layer 1, head 2" in html and "Plotly.newPlot" in html
        assert not page.errors, page.errors
    finally:
        page.close()


def test_lens_by_language_in_a_real_browser(server, browser, tmp_path):
    query = urllib.parse.urlencode({"model": "zoo:gpt-bi", "tab": "Lens", "lens": "by language",
                                    "language_figure": "language of the top tokens"})
    page = open_page(browser, f"{server}/?{query}")
    try:
        page.wait_for_selector(".st-key-language-figure .js-plotly-plot", timeout=60_000)
        text = page.locator("[data-testid='stMainBlockContainer']").inner_text()
        assert "accuracy, en prompts" in text and "consistency en-vo" in text
        assert "language of the top" in page.locator(".st-key-language-figure").inner_text()
        assert not exceptions(page), exceptions(page)
        page.screenshot(path=str(shots(tmp_path) / "gpt-bi-lens-by-language.png"), full_page=True)
        assert not page.errors, page.errors
    finally:
        page.close()

