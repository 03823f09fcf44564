"""Figures as standalone HTML: works offline (plotly.js inlined), written atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def figure_html(fig: Any, *, full_html: bool = True) -> str:
    """The figure as one HTML document with plotly.js inlined (opens without a network)."""
    return fig.to_html(include_plotlyjs=True, full_html=full_html)


def figure_from_json(text: str) -> Any:
    """A plotly figure from its JSON (``fig.to_json()``: what a study keeps beside each figure's HTML)."""
    import plotly.io as pio

    return pio.from_json(text)


def write_html(fig: Any, path: str | os.PathLike) -> Path:
    """Write ``figure_html(fig)`` to ``path`` through a temporary file and a rename (never half-written)."""
    from ..atomic import atomic_write_text

    return atomic_write_text(path, figure_html(fig))
