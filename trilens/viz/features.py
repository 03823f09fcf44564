"""Figures of feature neurons: GRADIEND's training curve, feature values per class, the rewrite grid, neuron maps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import InputError
from ._common import as_array, layout
from .curves import curves


def training_curve(frame: Any, *, title: str = "") -> Any:
    """Held-out |r| against the step, one line per seed (``frame``: columns seed, step, abs_r)."""
    steps = sorted(set(frame["step"]))
    series = {f"seed {seed}": part.set_index("step")["abs_r"].reindex(steps).to_numpy()
              for seed, part in frame.groupby("seed", sort=True)}
    fig = curves(steps, series, title=title, x_title="training step", y_title="held-out |Pearson r|")
    return fig.update_yaxes(range=[0, 1.02])


def feature_values(values: Any, groups: Sequence[str], texts: Sequence[str], *, order: Sequence[str] | None = None,
                   title: str = "") -> Any:
    """One column of points per group (class A, class B, neutral) at each text's feature value; hover = the text."""
    import plotly.graph_objects as go

    v = as_array(values, 1, "feature values")
    if len(groups) != len(v) or len(texts) != len(v):
        raise InputError(f"{len(v)} values, {len(groups)} groups and {len(texts)} texts: give one of each per text.")
    fig = go.Figure()
    for g in order or sorted(set(groups)):
        idx = [i for i, x in enumerate(groups) if x == g]
        fig.add_trace(go.Box(y=v[idx], x=[g] * len(idx), name=g, boxpoints="all", jitter=0.4, pointpos=0,
                             hovertext=[texts[i] for i in idx], hoverinfo="y+text"))
    fig.update_yaxes(range=[-1.05, 1.05])
    return layout(fig, title=title, x_title="", y_title="feature value h", showlegend=False)


def rewrite_grid(alphas: Sequence[float], series: Mapping[str, Any], *, baseline: float | None = None,
                 title: str = "", y_title: str = "") -> Any:
    """A metric against the rewrite step α (log axis), one line per feature value h; the base model as a line."""
    fig = curves([float(a) for a in alphas], series, title=title, x_title="α (rewrite step)", y_title=y_title,
                 hline=None if baseline is None else (baseline, "base model"))
    return fig.update_xaxes(type="log")
