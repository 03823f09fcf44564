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

# Counts finished script runs (running -> notRunning) so a test can wait for the rerun its own click started.
WATCH_RUNS = """() => {
  if (window.__trilensRuns !== undefined) return;
  window.__trilensRuns = 0;
  let running = false;
  const check = () => {
    const el = document.querySelector('[data-test-script-state]');
    const state = el && el.getAttribute('data-test-script-state');
    if (state === 'running') running = true;
    else if (running && state === 'notRunning') { running = false; window.__trilensRuns += 1; }
  };
  new MutationObserver(check).observe(document.body, {attributes: true, subtree: true, childList: true,
                                                       attributeFilter: ['data-test-script-state']});
}"""


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


@contextmanager
def serve(command: list[str], port: int, timeout: float = 180.0):
    """Run a Streamlit server command until the block ends; yields its URL once ``/_stcore/health`` says ok."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited ({proc.returncode}): {proc.stdout.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().decode().strip() == "ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"no healthy server on port {port} after {timeout:.0f} s")
            time.sleep(0.2)
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


def streamlit_command(script: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(port), "--server.address",
            "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--server.fileWatcherType", "none"]


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


def open_page(browser, url: str, timeout_ms: int = 180_000):
    """A page at ``url`` after its first script run has finished; console errors are collected in ``page.errors``."""
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    page.errors = []
    page.on("console", lambda msg: page.errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda err: page.errors.append(str(err)))
    page.goto(url)
    page.wait_for_selector("[data-testid='stApp']", timeout=timeout_ms)
    page.wait_for_selector(IDLE, timeout=timeout_ms)
    page.evaluate(WATCH_RUNS)
    return page


def runs(page) -> int:
    return page.evaluate("() => window.__trilensRuns")


def wait_rerun(page, before: int, timeout_ms: int = 120_000) -> None:
    """Wait until a script run that started after ``runs(page) == before`` has finished."""
    page.wait_for_function(f"() => window.__trilensRuns > {before}", timeout=timeout_ms)
    page.wait_for_selector(IDLE, timeout=timeout_ms)


def pick(page, key: str, option: str) -> None:
    """Choose ``option`` in the selectbox with widget key ``key``."""
    page.locator(f".st-key-{key} [role='combobox']").click()
    page.get_by_role("option", name=option, exact=True).click()


def exceptions(page) -> list[str]:
    return page.locator("[data-testid='stException']").all_inner_texts()
