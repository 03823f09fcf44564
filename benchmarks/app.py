"""App benchmark (issue 13): what a person feels in a real browser, warm server, zoo models, CPU.

    python benchmarks/app.py [--models zoo:gpt zoo:bert zoo:t5] [--changes 20] [--inputs 6]

Measured with Playwright driving Debian's chromium (tests/app_driver.py). Every time runs to the page's last
change (a MutationObserver on the whole document; the page then stays quiet for 0.4 s with the script not running),
so it includes drawing the charts:
  first render   a fresh page load (navigation start to last change): the app's first tab and its Attention tab, a
                 minimal Streamlit page (``st.write``) and a minimal page with one plotly heatmap, interleaved in the
                 same run; the app's cost is the difference (target: at most 1 s more than the minimal page). A tab
                 with charts is also set against the minimal page with a heatmap: Streamlit loads plotly.js (about
                 3.5 MB) when the first chart of a page appears, whoever draws it
  change         choosing another layer, head or head statistic on the Attention tab: from the click on the option
                 (the list already open) to the last change (targets: median <= 0.5 s, 95th percentile <= 1 s); the
                 same on the minimal page with a selectbox and one heatmap is the floor of a rerun on this machine
  new input      submitting a new text in the sidebar on the Lens tab: forward + capture + lens + drawing
                 (target: <= 1.5 s)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from app_driver import (
    app_command,
    browser_available,
    chromium,
    free_port,
    loaded_in,
    open_options,
    open_page,
    serve,
    settle,
)

from trilens.cli.app import streamlit_command  # noqa: E402  (the app's own server settings, for the baselines too)

NEW_INPUTS = {  # texts the zoo models were trained on, each new to the cache
    "zoo:gpt": ["not ( F or T ) =", "( T and T ) =", "not F =", "( F or F ) =", "not ( T or F ) =", "( T and F ) =",
                "not ( F and F ) =", "( F or T ) ="],
    "zoo:bert": ["not ( F or T ) = [MASK]", "( T and T ) = [MASK]", "not F = [MASK]", "( F or F ) = [MASK]",
                 "not ( T or F ) = [MASK]", "( T and F ) = [MASK]", "not ( F and F ) = [MASK]", "( F or T ) = [MASK]"],
    "zoo:t5": ["a b c >", "d e f g >", "h a b >", "c c d e >", "f g h a b >", "b a >", "e d c b a >", "g f >"],
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def first_render(browser, url: str, rounds: int) -> list[float]:
    """Seconds from navigation to the page's last change (its last chart drawn), fresh pages."""
    times = []
    for _ in range(rounds):
        page = open_page(browser, url)
        times.append(loaded_in(page))
        page.close()
    return times


MINIMAL_PAGE = "import streamlit as st\nst.write('hello')\n"
MINIMAL_CHART = """import numpy as np
import plotly.graph_objects as go
import streamlit as st

layer = st.selectbox("layer", [0, 1], key="layer")
st.plotly_chart(go.Figure(go.Heatmap(z=np.random.default_rng(layer).random((7, 7)))), key="chart")
"""


def changes(browser, url: str, n: int, keys: tuple[str, ...] = ("layer", "head", "statistic")) -> list[float]:
    """Alternate layer, head and statistic, each time to a value other than the current one."""
    page = open_page(browser, url)
    cycle = {"layer": ["1", "0"], "head": ["1", "0"], "statistic": ["mass on the first token", "entropy"]}
    times = []
    for i in range(n):
        what = keys[i % len(keys)]
        current = page.locator(f".st-key-{what} [role='combobox']").input_value()
        option = next(o for o in cycle[what] if o != current)
        open_options(page, what)  # the user opens the list; the time runs from the choice
        choice = page.get_by_role("option", name=option, exact=True)
        choice.wait_for()
        times.append(settle(page, choice.click))
    errors = page.errors
    page.close()
    if errors:
        raise RuntimeError(f"console errors: {errors}")
    return times


def new_inputs(browser, url: str, texts: list[str]) -> list[float]:
    page = open_page(browser, url)
    times = []
    for text in texts:
        def submit():
            page.locator(".st-key-text textarea").fill(text)
            page.locator("[data-testid='stSidebar'] button", has_text="Analyse").click()

        times.append(settle(page, submit))
    page.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["zoo:gpt", "zoo:bert", "zoo:t5"])
    parser.add_argument("--changes", type=int, default=21)
    parser.add_argument("--inputs", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    why = browser_available()
    if why:
        raise SystemExit(f"benchmarks/app.py needs a browser: {why}")
    folder = Path(tempfile.mkdtemp())
    minimal, minimal_chart = folder / "minimal.py", folder / "minimal_chart.py"
    minimal.write_text(MINIMAL_PAGE)
    minimal_chart.write_text(MINIMAL_CHART)
    port_app, port_min, port_chart = free_port(), free_port(), free_port()
    with serve(app_command(args.models[0], port_app), port_app) as app_url, \
            serve(streamlit_command(minimal, port_min), port_min) as min_url, \
            serve(streamlit_command(minimal_chart, port_chart), port_chart) as chart_url, chromium() as browser:
        floor = changes(browser, chart_url, args.changes, keys=("layer",))
        print(f"{'model':<9} {'what':<34} {'n':>3} {'median s':>8} {'p95 s':>6} {'max s':>6}  target")
        for model in args.models:
            start = f"{app_url}/?" + urllib.parse.urlencode({"model": model})
            attention = f"{app_url}/?" + urllib.parse.urlencode({"model": model, "tab": "Attention"})
            lens = f"{app_url}/?" + urllib.parse.urlencode({"model": model, "tab": "Lens"})
            first_render(browser, attention, 1)  # warm: model loaded, first input cached
            app_times, tab_times, min_times, chart_times = [], [], [], []
            for _ in range(args.rounds):  # interleaved
                app_times += first_render(browser, start, 1)
                tab_times += first_render(browser, attention, 1)
                min_times += first_render(browser, min_url, 1)
                chart_times += first_render(browser, chart_url, 1)
            min_med = statistics.median(min_times)
            rows = [("change: minimal page, one heatmap", floor, "the floor of a rerun + redraw here"),
                    ("first render: minimal Streamlit page", min_times, ""),
                    ("first render: minimal page + heatmap", chart_times,
                     f"minimal + plotly = {statistics.median(chart_times) - min_med:+.2f} s"),
                    ("first render: app (first tab)", app_times, f"app − minimal = "
                                                                 f"{statistics.median(app_times) - min_med:+.2f} s "
                                                                 "(target ≤ +1 s)"),
                    ("first render: app (Attention tab)", tab_times,
                     f"app − minimal = {statistics.median(tab_times) - min_med:+.2f} s; app − minimal page + "
                     f"heatmap = {statistics.median(tab_times) - statistics.median(chart_times):+.2f} s")]
            change = changes(browser, attention, args.changes)
            inputs = new_inputs(browser, lens, NEW_INPUTS[model][: args.inputs])
            print("new inputs, one by one:", " ".join(f"{t:.2f}" for t in inputs), flush=True)
            rows += [("change layer / head / statistic", change, f"median ≤ 0.5 s, p95 ≤ 1 s; app − minimal = "
                                                                 f"{statistics.median(change) - statistics.median(floor):+.2f} s"),
                    ("new input (Lens tab)", inputs, "≤ 1.5 s")]
            for what, times, target in rows:
                print(f"{model:<9} {what:<34} {len(times):>3} {statistics.median(times):>8.2f} "
                      f"{percentile(times, 0.95):>6.2f} {max(times):>6.2f}  {target}", flush=True)


if __name__ == "__main__":
    main()
