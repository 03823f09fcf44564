"""Patching figures: one heatmap per panel (a site kind of one stack) on a shared, diverging colour scale."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InputError
from ._common import as_array, layout


def panel_heatmaps(
    panels: Sequence[dict[str, Any]],
    *,
    title: str = "",
    colorbar: str = "",
    zmid: float = 0.0,
) -> Any:
    """Heatmaps side by side (one row each), one colour scale centred on ``zmid``.

    Each panel is ``{"z": [rows, columns], "x": column labels, "y": row labels, "title": ..., "x_title": ...,
    "y_title": ...}``; NaN cells (cells that do not exist) stay blank.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if not panels:
        raise InputError("no panels to draw.")
    zs = [as_array(p["z"], 2, f"panel {p.get('title', i)!r}") for i, p in enumerate(panels)]
    for p, z in zip(panels, zs):
        if len(p["x"]) != z.shape[1] or len(p["y"]) != z.shape[0]:
            raise InputError(f"panel {p.get('title', '')!r}: {len(p['y'])} x {len(p['x'])} labels for values {z.shape}.")
    finite = [np.abs(z[np.isfinite(z)] - zmid) for z in zs if np.isfinite(z).any()]
    span = float(max((f.max() for f in finite), default=1.0)) or 1.0
    heights = [max(z.shape[0], 2) for z in zs]
    # room between panels for the rotated position labels, the axis title and the next panel's title
    gap_px, height = 120, 100 + 26 * sum(heights) + 120 * len(zs)
    fig = make_subplots(rows=len(zs), cols=1, subplot_titles=[p.get("title", "") for p in panels],
                        row_heights=[h / sum(heights) for h in heights],
                        vertical_spacing=min(gap_px / height, 1 / max(len(zs) - 1, 1) - 1e-3))
    for i, (p, z) in enumerate(zip(panels, zs), start=1):
        fig.add_trace(go.Heatmap(z=z, x=list(p["x"]), y=list(p["y"]), colorscale="RdBu", zmid=zmid, zmin=zmid - span,
                                 zmax=zmid + span, showscale=i == 1, colorbar={"title": colorbar},
                                 hovertemplate="%{y}<br>%{x}<br>" + (colorbar or "value") + " %{z:.3g}<extra></extra>"),
                      row=i, col=1)
        fig.update_xaxes(title_text=p.get("x_title", ""), type="category", row=i, col=1)
        fig.update_yaxes(title_text=p.get("y_title", ""), type="category", autorange="reversed", row=i, col=1)
    fig = layout(fig, title=title, x_title="", y_title="", height=max(320, height))
    for i in range(1, len(zs) + 1):  # layout() set the first axes' titles to ''; restore each panel's own
        fig.update_xaxes(title_text=panels[i - 1].get("x_title", ""), row=i, col=1)
        fig.update_yaxes(title_text=panels[i - 1].get("y_title", ""), row=i, col=1)
    return fig
