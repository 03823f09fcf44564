"""App benchmark (issue 13): what a person feels in a real browser, warm server, zoo models, CPU.

    python benchmarks/app.py [--models zoo:gpt zoo:bert zoo:t5] [--changes 20] [--inputs 6]

Measured with Playwright driving Debian's chromium (tests/app_driver.py):
  first render   a fresh page load until the script has finished and the browser painted, for the app (on the
                 Attention tab) and for a minimal Streamlit page (``st.write``) served the same way, in the same run;
                 the app's cost is the difference (targets: at most 1 s more than the minimal page)
  change         choosing another layer, head or head statistic on the Attention tab: from the click on the option
                 until the rerun has finished and painted (targets: median <= 0.5 s, 95th percentile <= 1 s)
  new input      submitting a new text in the sidebar on the Lens tab: forward + capture + lens + drawing
                 (target: <= 1.5 s)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from app_driver import (
    app_command,
    browser_available,
    chromium,
    free_port,
    open_page,
    pick,
    runs,
    serve,
    streamlit_command,
    wait_rerun,
)

PAINT = "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))"
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
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        page = open_page(browser, url)
        page.evaluate(PAINT)
        times.append(time.perf_counter() - start)
        page.close()
    return times


def timed_rerun(page, action) -> float:
    before = runs(page)
    start = time.perf_counter()
    action()
    wait_rerun(page, before)
    page.evaluate(PAINT)
    return time.perf_counter() - start


def changes(browser, url: str, n: int) -> list[float]:
    """Alternate layer, head and statistic, each time to a value other than the current one."""
    page = open_page(browser, url)
    cycle = {"layer": ["1", "0"], "head": ["1", "0"], "statistic": ["mass on the first token", "entropy"]}
    times = []
    for i in range(n):
        what = ("layer", "head", "statistic")[i % 3]
        option = cycle[what][(i // 3) % 2]
        times.append(timed_rerun(page, lambda: pick(page, what, option)))
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

        times.append(timed_rerun(page, submit))
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
    minimal = Path(tempfile.mkdtemp()) / "minimal.py"
    minimal.write_text("import streamlit as st\nst.write('hello')\n")
    port_app, port_min = free_port(), free_port()
    with serve(app_command(args.models[0], port_app), port_app) as app_url, \
            serve(streamlit_command(minimal, port_min), port_min) as min_url, chromium() as browser:
        print(f"{'model':<9} {'what':<34} {'n':>3} {'median s':>8} {'p95 s':>6} {'max s':>6}  target")
        for model in args.models:
            attention = f"{app_url}/?" + urllib.parse.urlencode({"model": model, "tab": "Attention"})
            lens = f"{app_url}/?" + urllib.parse.urlencode({"model": model, "tab": "Lens"})
            first_render(browser, attention, 1)  # warm: model loaded, first input cached
            app_times, min_times = [], []
            for _ in range(args.rounds):  # interleaved
                app_times += first_render(browser, attention, 1)
                min_times += first_render(browser, min_url, 1)
            app_med, min_med = statistics.median(app_times), statistics.median(min_times)
            rows = [("first render: minimal Streamlit page", min_times, ""),
                    ("first render: app (Attention tab)", app_times, f"app − minimal = {app_med - min_med:+.2f} s "
                                                                    "(target ≤ +1 s)"),
                    ("change layer / head / statistic", changes(browser, attention, args.changes),
                     "median ≤ 0.5 s, p95 ≤ 1 s"),
                    ("new input (Lens tab)", new_inputs(browser, lens, NEW_INPUTS[model][: args.inputs]), "≤ 1.5 s")]
            for what, times, target in rows:
                print(f"{model:<9} {what:<34} {len(times):>3} {statistics.median(times):>8.2f} "
                      f"{percentile(times, 0.95):>6.2f} {max(times):>6.2f}  {target}", flush=True)


if __name__ == "__main__":
    main()
