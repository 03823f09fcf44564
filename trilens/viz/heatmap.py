"""Layers x positions heatmaps (a lens's top tokens, activation or gradient norms per layer)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InputError
from ._common import as_array, layout, token_labels


def layer_heatmap(
    values: Any,
    tokens: Sequence[str],
    *,
    layers: Sequence[Any] | None = None,
    text: Sequence[Sequence[str]] | None = None,
    hover: Sequence[Sequence[str]] | None = None,
    title: str = "",
    colorbar: str = "",
    colorscale: str = "Blues",
    zmid: float | None = None,
    x_title: str = "position: input token",
    y_title: str = "layer (0 = embeddings)",
) -> Any:
    """Heatmap of ``values [layer, position]`` with the input token under each column.

    Args:
        tokens: one label per position (made unique as ``"i:token"``).
        layers: one label per row (default 0, 1, ...).
        text: optional cell text ``[layer][position]`` (e.g. the lens's top token and its probability),
            shown in the cells and on hover.
        hover: optional hover text ``[layer][position]`` instead of ``text`` (e.g. the top-5 tokens).
        zmid: the value at the colour scale's middle (0 for differences, with a diverging ``colorscale``).
    """
    import plotly.graph_objects as go

    z = as_array(values, 2, "a layer heatmap")
    n_layers, n_pos = z.shape
    labels = token_labels(tokens, n_pos, "position")
    rows = list(layers) if layers is not None else list(range(n_layers))
    if len(rows) != n_layers:
        raise InputError(f"{len(rows)} layer labels for {n_layers} rows.")
    for name, grid in (("text", text), ("hover", hover)):
        if grid is not None and (len(grid) != n_layers or any(len(r) != n_pos for r in grid)):
            raise InputError(f"{name} must be {n_layers} rows of {n_pos} strings, one per cell.")
    cells: dict[str, Any] = {}
    if text is not None:
        cells = {"text": [list(r) for r in text], "texttemplate": "%{text}"}
    shown = "%{customdata}" if hover is not None else "%{text}" if text is not None else ""
    if hover is not None:
        cells["customdata"] = [list(r) for r in hover]
    cells["hovertemplate"] = ("layer %{y}<br>%{x}<br>" + (shown + "<br>" if shown else "") + (colorbar or "value")
                              + " %{z:.3g}<extra></extra>")
    if zmid is not None:
        cells["zmid"] = zmid
    fig = go.Figure(go.Heatmap(z=z, x=labels, y=rows, colorscale=colorscale, colorbar={"title": colorbar}, **cells))
    fig.update_yaxes(type="category" if not all(isinstance(r, (int, np.integer)) for r in rows) else "linear")
    return layout(fig, title=title, x_title=x_title, y_title=y_title)
