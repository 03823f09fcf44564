"""The trilens app: look inside a model of any of the three families in the browser (``trilens app``).

Layers, each importing only those before it: the compute modules (pure: a ``Model`` and an input -> arrays and
labels; no Streamlit) -> ``state`` (model and result caching, the lock, the URL) -> ``panels/`` (one file per view)
-> ``main`` (the page Streamlit runs). The app sees models only through trilens's public API.
"""

from pathlib import Path

APP_SCRIPT = Path(__file__).with_name("main.py")

__all__ = ["APP_SCRIPT"]
