"""The app in a real browser (Debian's chromium, driven by Playwright): every tab for one model of each family,
layer and head changes, no exception on the page and no console error. Screenshots go to ``TRILENS_SCREENSHOTS``
(default: the test's temporary folder)."""

import os
import urllib.parse
from pathlib import Path

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

TABS = ("Tokens & prediction", "Attention", "Attention over steps", "Attribution", "Feature neurons", "Lens", "Decoder lens",
        "Probes", "Compare")
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
            if tab in ("Attention", "Attention over steps", "Attribution", "Lens") or (tab == "Decoder lens" and model == "zoo:t5"):
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
