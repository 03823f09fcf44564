"""Attribution figures: input tokens x generated steps (Inseq's layout), source above the target prefix, with the step
scores underneath."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._common import _AXIS, as_array, layout, token_labels


def attribution_map(values: Any, tokens: Sequence[str], steps: Sequence[str], *, n_source: int | None = None,
                    step_scores: dict[str, Sequence[float]] | None = None, title: str = "",
                    value_title: str = "attribution") -> Any:
    """Heatmap of ``values [token, step]`` (rows: source tokens, then the target prefix from ``n_source`` on, split by
    a line), one column per generated step, and a line per step score under it. Signed values get a diverging
    scale centred on 0."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    z = as_array(values, 2, "an attribution map")
    rows = token_labels(tokens, z.shape[0], "token")
    cols = token_labels(steps, z.shape[1], "step")
    signed = bool((z < 0).any())
    scale = {"colorscale": "RdBu", "zmid": 0.0} if signed else {"colorscale": "Blues", "zmin": 0.0}
    scores = {k: v for k, v in (step_scores or {}).items() if len(v)}
    fig = make_subplots(rows=2 if scores else 1, cols=1, shared_xaxes=True, vertical_spacing=0.04,
                        row_heights=[0.78, 0.22] if scores else None)
    fig.add_trace(go.Heatmap(z=z, x=cols, y=rows, colorbar={"title": value_title, "len": 0.75, "y": 0.62}, **scale,
                             hovertemplate="step %{x}<br>token %{y}<br>" + value_title + " %{z:.3g}<extra></extra>"),
                  row=1, col=1)
    if n_source is not None and 0 < n_source < z.shape[0]:
        fig.add_shape(type="line", xref="x domain", x0=0, x1=1, yref="y", y0=n_source - 0.5, y1=n_source - 0.5,
                      line={"color": "black", "width": 2}, row=1, col=1)
    for name, v in scores.items():
        fig.add_trace(go.Scatter(x=cols, y=np.asarray(v, dtype=np.float32), mode="lines+markers", name=name), row=2, col=1)
    fig.update_yaxes(autorange="reversed", row=1, col=1)
    fig.update_xaxes(**_AXIS)
    fig.update_yaxes(**_AXIS)
    return layout(fig, title=title, x_title="", y_title="source / target token",
                  height=max(360, 22 * z.shape[0] + (260 if scores else 140)),
                  legend={"orientation": "h", "y": -0.12})
