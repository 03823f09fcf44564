"""``trilens app [MODEL] [--port P] [--host 127.0.0.1]``: the Streamlit app on a local port."""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from ..app import APP_SCRIPT
from ..errors import InputError

DEFAULT_MODEL = "zoo:t5"


def streamlit_command(script: Path, port: int, host: str = "127.0.0.1", *script_args: str) -> list[str]:
    """The ``streamlit run`` command line for ``script``: headless, no usage statistics, no file watcher, a minimal
    toolbar, and no garbage collection after every rerun (with large models it costs seconds per click: streamlit
    #8977)."""
    return [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(port), "--server.address", host,
            "--server.headless", "true", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
            "--client.toolbarMode", "minimal", "--runner.postScriptGC", "false", "--", *script_args]


def check_model(model: str) -> None:
    """Fail before starting a server when MODEL can be neither a zoo name nor a folder (a hub id has a slash and no
    such folder: the page will try it)."""
    if model.startswith("zoo:"):
        from ..zoo import ZOO

        if model[4:] not in ZOO:
            raise InputError(f"there is no {model}; the zoo has {', '.join('zoo:' + n for n in ZOO)}.")
        return
    path = Path(model).expanduser()
    if path.exists() and not path.is_dir():
        raise InputError(f"{model} is a file; give a model folder (config.json, weights, tokenizer) or zoo:NAME.")
    if not path.exists() and (model.count("/") != 1 or model.startswith((".", "/", "~"))):
        raise InputError(f"{model} does not exist; give a model folder, a hub id or zoo:NAME.")


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("streamlit") is None:
        raise InputError("the app needs Streamlit: pip install 'trilens[app]'.")
    if not 0 < args.port < 65536:
        raise InputError(f"--port must be between 1 and 65535, not {args.port}.")
    check_model(args.model)
    print(f"trilens app: {args.model} on http://{args.host}:{args.port} (Ctrl+C stops it)", flush=True)
    command = streamlit_command(APP_SCRIPT, args.port, args.host, "--model", args.model)
    if os.name == "posix":
        # this process becomes the server: a signal to `trilens app` (Ctrl+C, a process manager, a container stop)
        # reaches Streamlit itself, and no child is left holding the port
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(command[0], command)
    try:  # Windows has no exec that keeps the process: wait for the child, and stop it with ours
        return subprocess.call(command)
    except KeyboardInterrupt:
        return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("app", help="look inside a model in the browser (Streamlit, on 127.0.0.1)")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"a model folder, hub id or zoo:NAME (default {DEFAULT_MODEL})")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    p.set_defaults(func=run)
