"""Curves with error bands: a metric per layer (probes, lenses) or per generation step."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import InputError
from ._common import as_array, layout


def curves(
    x: Sequence[Any],
    series: Mapping[str, Any],
    *,
    bands: Mapping[str, Any] | None = None,
    dash: Mapping[str, str] | None = None,
    title: str = "",
    x_title: str = "layer (0 = embeddings)",
    y_title: str = "",
    hline: tuple[float, str] | None = None,
    log_y: bool = False,
) -> Any:
    """One line per entry of ``series`` (name -> values at ``x``), each with an optional ±band.

    Args:
        bands: name -> half-width of the band around that series (e.g. one std over folds or seeds).
        dash: name -> plotly dash style (``"dot"`` for a control task, say).
        hline: ``(y, label)`` for a reference level (a majority-class baseline, chance).
    """
    import plotly.graph_objects as go

    xs = list(x)
    fig = go.Figure()
    for name, values in series.items():
        y = as_array(values, 1, f"series {name!r}")
        if len(y) != len(xs):
            raise InputError(f"series {name!r} has {len(y)} values for {len(xs)} x positions.")
        if bands is not None and name in bands:
            half = as_array(bands[name], 1, f"band of {name!r}")
            if len(half) != len(xs):
                raise InputError(f"the band of {name!r} has {len(half)} values for {len(xs)} x positions.")
            fig.add_trace(go.Scatter(x=xs + xs[::-1], y=list(y + half) + list((y - half)[::-1]), fill="toself", opacity=0.2,
                                     line={"width": 0}, showlegend=False, hoverinfo="skip", name=f"{name} band",
                                     legendgroup=name))
        fig.add_trace(go.Scatter(x=xs, y=y, mode="lines+markers", name=name, legendgroup=name,
                                 line={"dash": (dash or {}).get(name, "solid")}))
    if hline is not None:
        fig.add_hline(y=hline[0], line_dash="dash", line_color="grey", annotation_text=hline[1])
    if log_y:
        fig.update_yaxes(type="log")
    return layout(fig, title=title, x_title=x_title, y_title=y_title)
