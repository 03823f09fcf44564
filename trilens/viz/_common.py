"""What every figure builder shares: float32 arrays, unique token labels, the house layout."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InputError


def as_array(values: Any, ndim: int, what: str) -> np.ndarray:
    """``values`` (tensor, array or nested lists) as a float32 numpy array of ``ndim`` dimensions."""
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    arr = np.asarray(values, dtype=np.float32)
    if arr.ndim != ndim:
        raise InputError(f"{what} needs a {ndim}-D array, not shape {tuple(arr.shape)}.")
    return arr


def token_labels(tokens: Sequence[Any], n: int, what: str) -> list[str]:
    """``"i:token"`` axis labels: unique even where a token repeats (a categorical axis would merge them)."""
    tokens = list(tokens)
    if len(tokens) != n:
        raise InputError(f"{len(tokens)} {what} labels for {n} {what}s: pass one label per {what}.")
    return [f"{i}:{t}" for i, t in enumerate(tokens)]


# The look of plotly's "plotly_white" template, set as plain properties: assigning a template validates all of it
# (about 20 ms per figure, most of the time of redrawing an app panel).
_AXIS = {"gridcolor": "#EBF0F8", "linecolor": "#EBF0F8", "zerolinecolor": "#EBF0F8", "zerolinewidth": 2}
_WHITE = {"paper_bgcolor": "white", "plot_bgcolor": "white", "font": {"color": "#2a3f5f"}}


def layout(fig: Any, *, title: str, x_title: str, y_title: str, **extra: Any) -> Any:
    fig.update_layout(title=title, xaxis={"title": x_title, **_AXIS}, yaxis={"title": y_title, **_AXIS},
                      margin={"l": 60, "r": 20, "t": 60, "b": 60}, **_WHITE, **extra)
    return fig
