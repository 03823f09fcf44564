"""Token heatmaps for attributions: generated steps x source (and earlier target) tokens."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._common import as_array, layout, token_labels


def token_heatmap(
    scores: Any,
    source_tokens: Sequence[str],
    step_tokens: Sequence[str],
    *,
    title: str = "",
    colorbar: str = "attribution",
    signed: bool | None = None,
    x_title: str = "source token",
    y_title: str = "generated step: token",
) -> Any:
    """Heatmap of ``scores [step, source]``: how much each source token counts for each step's token.

    Signed scores (any negative value, or ``signed=True``) get a diverging scale centred on 0.
    """
    import plotly.graph_objects as go

    z = as_array(scores, 2, "a token heatmap")
    x = token_labels(source_tokens, z.shape[1], "source token")
    y = token_labels(step_tokens, z.shape[0], "step")
    signed = bool(np.nanmin(z) < 0) if signed is None and z.size else bool(signed)
    colour = {"colorscale": "RdBu", "zmid": 0.0, "reversescale": True} if signed else {"colorscale": "Blues", "zmin": 0.0}
    fig = go.Figure(go.Heatmap(z=z, x=x, y=y, colorbar={"title": colorbar}, **colour,
                               hovertemplate="step %{y}<br>source %{x}<br>" + colorbar + " %{z:.3g}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    return layout(fig, title=title, x_title=x_title, y_title=y_title)
