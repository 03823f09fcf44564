"""Drive the app in a real browser: start ``trilens app`` (or any Streamlit script) on a free port, wait on
Streamlit's own signals (``/_stcore/health``, the script state), and time reruns. Used by the browser test and by
``benchmarks/app.py``; Playwright drives Debian's chromium (never ``playwright install``)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = os.environ.get("TRILENS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
IDLE = "[data-test-script-state='notRunning']"

# Remembers when the page last changed (any element, attribute or text under the app), so the time of an interaction
# is the time until its last change: a rerun too quick to show the "running" state is timed as well.
WATCH_CHANGES = """(() => {
  if (window.__lastChange !== undefined) return;
  window.__lastChange = performance.now();
  new MutationObserver(() => { window.__lastChange = performance.now(); })
    .observe(document, {attributes: true, childList: true, subtree: true, characterData: true});
})();"""
QUIET_MS = 400  # no change for this long after the last one: the interaction is over


def browser_available() -> str | None:
    """Why the browser test cannot run here, or None if it can."""
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        return f"no chromium at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed (pip install playwright; never `playwright install`)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(proc: subprocess.Popen, port: int, timeout: float = 180.0) -> None:
    """Return once the Streamlit server of ``proc`` answers ok on ``/_stcore/health``; fail if it exits or times out."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            output = proc.stdout.read().decode()[-2000:] if proc.stdout else ""
            raise RuntimeError(f"the server exited ({proc.returncode}): {output}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.read().decode().strip() == "ok":
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no healthy server on port {port} after {timeout:.0f} s")
        time.sleep(0.2)


@contextmanager
def serve(command: list[str], port: int, timeout: float = 180.0):
    """Run a Streamlit server command until the block ends; yields its URL once ``/_stcore/health`` says ok."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, port, timeout)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def app_command(model: str, port: int) -> list[str]:
    return [sys.executable, "-m", "trilens.cli", "app", model, "--port", str(port)]


@contextmanager
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
                                    args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser, url: str, timeout_ms: int = 180_000, ready: str = "[data-testid='stMainBlockContainer'] "
              "[data-testid='stElementContainer']"):
    """A page at ``url`` after its first script run has drawn ``ready`` and finished; console errors are collected
    in ``page.errors``."""
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    page.errors = []
    page.on("console", lambda msg: page.errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda err: page.errors.append(str(err)))
    page.add_init_script(WATCH_CHANGES)  # from the first byte of the document on
    page.goto(url)
    page.wait_for_selector("[data-testid='stApp']", timeout=timeout_ms)
    page.wait_for_selector(ready, timeout=timeout_ms)
    page.wait_for_selector(IDLE, timeout=timeout_ms)
    quiet(page, 0, timeout_ms)
    return page


def quiet(page, since: float, timeout_ms: int = 120_000) -> None:
    """Wait until the page changed after ``since`` (ms, page clock), then stayed quiet for ``QUIET_MS``, with the
    script not running and every plotly chart drawn."""
    page.wait_for_function(
        f"() => window.__lastChange > {since} && performance.now() - window.__lastChange > {QUIET_MS} && "
        "document.querySelector('[data-test-script-state]').getAttribute('data-test-script-state') === 'notRunning' && "
        # plotly.js loads asynchronously (the page is quiet meanwhile): every chart must have drawn
        "Array.from(document.querySelectorAll(\"[data-testid='stPlotlyChart']\")).every(c => c.querySelector('.main-svg'))",
        timeout=timeout_ms, polling=50)


def loaded_in(page) -> float:
    """Seconds from the start of navigation to the page's last change (its first render, once ``open_page`` is back)."""
    return page.evaluate("() => window.__lastChange") / 1000


def settle(page, action, timeout_ms: int = 120_000) -> float:
    """Run ``action`` (a click, a submit) and return the seconds from it to the page's last change, once the page
    has been quiet for ``QUIET_MS`` and the script is not running."""
    start = page.evaluate("() => performance.now()")
    action()
    quiet(page, start, timeout_ms)
    return (page.evaluate("() => window.__lastChange") - start) / 1000


def open_options(page, key: str):
    """Open the selectbox with widget key ``key``; returns the locator of its options."""
    page.locator(f".st-key-{key} [role='combobox']").click()
    return page.get_by_role("option")


def pick(page, key: str, option: str) -> None:
    """Choose ``option`` in the selectbox with widget key ``key``."""
    open_options(page, key)
    page.get_by_role("option", name=option, exact=True).click()


def exceptions(page) -> list[str]:
    return page.locator("[data-testid='stException']").all_inner_texts()
