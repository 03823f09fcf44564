"""Attention: a layer x head summary grid, one full head with token labels, and one token's row across all heads
of a layer; encoder, decoder and cross-attention for encoder-decoders (like bertviz, for all three families)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ...viz import attention_pattern, head_grid
from .. import state
from ..attention_data import CROSS, STATISTICS, VIEW_TITLES
from ..inputs import AppInput
from .common import chart, downloads, shown_errors


@st.fragment
def attention_panel(source: str, inp: AppInput) -> None:
    with shown_errors():
        with state.timed("attention"):
            maps = state.attention(source, inp.text, inp.target)
        views = maps.views
        state.choose("view", views)
        top = st.columns([2, 2, 1, 1])
        view = top[0].radio("attention", views, format_func=VIEW_TITLES.get, key="view", horizontal=True,
                            bind="query-params")
        n_layers, n_heads, n_query, _ = maps.shape(view)
        stats = [s for s, (_, _, cross_ok) in STATISTICS.items() if view != CROSS or cross_ok]
        state.choose("statistic", stats)
        statistic = top[1].selectbox("head summary", stats, key="statistic", bind="query-params")
        state.choose("layer", list(range(n_layers)))
        layer = top[2].selectbox("layer", list(range(n_layers)), key="layer", bind="query-params")
        state.choose("head", list(range(n_heads)))
        head = top[3].selectbox("head", list(range(n_heads)), key="head", bind="query-params")

        left, right = st.columns([2, 3])
        grid = maps.summary(view, statistic)
        with left:
            chart(head_grid(grid, title=f"{statistic} of every head — {VIEW_TITLES[view]}", colorbar=STATISTICS[statistic][1]),
                  key="attention-grid")
            st.caption("Pick a layer and head above to see its full pattern (clicks on the grid select nothing).")
        pattern = maps.head(view, layer, head)
        figure = attention_pattern(pattern, maps.query_tokens[view], maps.key_tokens[view],
                                   title=f"{VIEW_TITLES[view]}: layer {layer}, head {head}")
        with right:
            chart(figure, key="attention-pattern")

        labels = [f"{i}: {t}" for i, t in enumerate(maps.query_tokens[view])]
        state.choose("focus", list(range(n_query)))
        token = st.selectbox("focus token: where it attends in every head of this layer", list(range(n_query)),
                             format_func=labels.__getitem__, key="focus", bind="query-params")
        rows = maps.focus(view, layer, token)
        chart(attention_pattern(rows, [f"head {h}" for h in range(n_heads)], maps.key_tokens[view],
                                title=f"“{maps.query_tokens[view][token]}” in layer {layer}, every head",
                                query_title="head"), key="attention-focus")

        frame = pd.DataFrame([{"view": view, "layer": layer, "head": head, "query": q, "query_token": qt, "key": k,
                               "key_token": kt, "weight": float(pattern[q, k])}
                              for q, qt in enumerate(maps.query_tokens[view])
                              for k, kt in enumerate(maps.key_tokens[view])])
        downloads("attention", frame, figure, extra={"summary": {"statistic": statistic, "layer_x_head": grid}})
