"""Figures as standalone HTML: works offline (plotly.js inlined), written atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any


def figure_html(fig: Any, *, full_html: bool = True) -> str:
    """The figure as one HTML document with plotly.js inlined (opens without a network)."""
    return fig.to_html(include_plotlyjs=True, full_html=full_html)


def write_html(fig: Any, path: str | os.PathLike) -> Path:
    """Write ``figure_html(fig)`` to ``path`` through a temporary file and a rename (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(figure_html(fig))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
