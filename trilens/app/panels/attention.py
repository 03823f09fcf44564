"""Attention: a layer x head summary grid, one full head with token labels, and one token's row across all heads
of a layer; encoder, decoder and cross-attention for encoder-decoders (like bertviz, for all three families).

The grid and the head views are fragments of their own: a new statistic redraws the grid only, a new layer, head or
focus token the head views only."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ...viz import attention_pattern, head_grid
from .. import state
from ..attention_data import CROSS, STATISTICS, VIEW_TITLES, AttentionMaps
from ..inputs import AppInput
from .common import chart, downloads, shown_errors


@st.fragment
def attention_panel(source: str, inp: AppInput) -> None:
    with shown_errors():
        with state.timed("attention"):
            maps = state.attention(source, inp.text, inp.target)
        state.choose("view", maps.views)
        view = st.radio("attention", maps.views, format_func=VIEW_TITLES.get, key="view", horizontal=True,
                        bind="query-params")
        left, right = st.columns([2, 3])
        with left:
            _grid(maps, view)
        with right:
            _head_views(maps, view)


@st.fragment
def _grid(maps: AttentionMaps, view: str) -> None:
    stats = [s for s, (_, _, cross_ok) in STATISTICS.items() if view != CROSS or cross_ok]
    state.choose("statistic", stats)
    statistic = st.selectbox("head summary", stats, key="statistic", bind="query-params")
    grid = maps.summary(view, statistic)
    figure = head_grid(grid, title=f"{statistic} of every head", colorbar=STATISTICS[statistic][1])
    chart(figure, key="attention-grid")
    st.caption(f"{VIEW_TITLES[view]}. Pick a layer and head on the right to see its full pattern (clicks on the grid "
               "select nothing).")
    def frame() -> pd.DataFrame:  # built when a download is clicked, not on every rerun
        return pd.DataFrame([{"view": view, "layer": layer, "head": head, statistic: float(grid[layer, head])}
                             for layer in range(grid.shape[0]) for head in range(grid.shape[1])])
    downloads("attention-grid", frame, figure)


@st.fragment
def _head_views(maps: AttentionMaps, view: str) -> None:
    n_layers, n_heads, n_query, _ = maps.shape(view)
    cols = st.columns(2)
    state.choose("layer", list(range(n_layers)))
    layer = cols[0].selectbox("layer", list(range(n_layers)), key="layer", bind="query-params")
    state.choose("head", list(range(n_heads)))
    head = cols[1].selectbox("head", list(range(n_heads)), key="head", bind="query-params")
    pattern = maps.head(view, layer, head)
    figure = maps.figure(view, layer, head)  # the trace's own figure of this head
    chart(figure, key="attention-pattern")

    labels = [f"{i}: {t}" for i, t in enumerate(maps.query_tokens[view])]
    state.choose("focus", list(range(n_query)))
    token = st.selectbox("focus token: where it attends in every head of this layer", list(range(n_query)),
                         format_func=labels.__getitem__, key="focus", bind="query-params")
    rows = maps.focus(view, layer, token)
    chart(attention_pattern(rows, [f"head {h}" for h in range(n_heads)], maps.key_tokens[view],
                            title=f"“{maps.query_tokens[view][token]}” in layer {layer}, every head",
                            query_title="head"), key="attention-focus")

    def frame() -> pd.DataFrame:  # built when a download is clicked, not on every rerun
        return pd.DataFrame([{"view": view, "layer": layer, "head": head, "query": q, "query_token": qt, "key": k,
                              "key_token": kt, "weight": float(pattern[q, k])}
                             for q, qt in enumerate(maps.query_tokens[view])
                             for k, kt in enumerate(maps.key_tokens[view])])
    downloads("attention", frame, figure)
