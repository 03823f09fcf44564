"""Compare: a second input beside the first; the lens difference per layer and position, and the attention
difference of one head (over the positions both inputs have)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ...viz import attention_pattern, layer_heatmap
from .. import state
from ..attention_data import VIEW_TITLES, difference
from ..inputs import AppInput
from ...lens.result import SHOWN
from ..lens_data import LENS_STATISTICS, lens_difference, statistics
from .common import chart, downloads, shown_errors


@st.fragment
def compare_panel(source: str, inp: AppInput, family: str) -> None:
    with st.form("compare-form", border=False):
        cols = st.columns(2 if family == "encoder-decoder" else 1)
        text = cols[0].text_input("second input" + (" (source)" if family == "encoder-decoder" else ""),
                                  key="compare_text", bind="query-params")
        target = cols[1].text_input("its target (empty: the model's own output)", key="compare_target",
                                    bind="query-params") if family == "encoder-decoder" else ""
        st.form_submit_button("Compare")
    if not text.strip():
        st.info("Type a second input: its lens and attention are shown as differences from the first (A − B).")
        return
    other = AppInput(text, target)
    with shown_errors():
        with state.timed("compare"):
            lens_a, lens_b = state.lens(source, inp.text, inp.target), state.lens(source, other.text, other.target)
            maps_a, maps_b = state.attention(source, inp.text, inp.target), state.attention(source, other.text, other.target)
        stats = [s for s in statistics(lens_a) if s in statistics(lens_b)]
        state.choose("compare_statistic", stats)
        statistic = st.selectbox("lens statistic", stats, key="compare_statistic", bind="query-params")
        diff, n = lens_difference(lens_a, lens_b, statistic)
        tokens_a, tokens_b = lens_a.tokens(), lens_b.tokens()
        labels = [f"{a} | {b}" for a, b in zip(tokens_a[:n], tokens_b[:n])]
        lens_fig = layer_heatmap(diff, labels, colorscale="RdBu", zmid=0.0,
                                 colorbar=f"Δ {SHOWN[LENS_STATISTICS[statistic]][0]}",
                                 title=f"lens {statistic}: A − B (columns: token of A | token of B)")
        chart(lens_fig, key="compare-lens")

        views = maps_a.views
        state.choose("compare_view", views)
        top = st.columns([2, 1, 1])
        view = top[0].radio("attention", views, format_func=VIEW_TITLES.get, key="compare_view", horizontal=True,
                            bind="query-params")
        n_layers, n_heads = maps_a.shape(view)[:2]
        state.choose("compare_layer", list(range(n_layers)))
        layer = top[1].selectbox("layer", list(range(n_layers)), key="compare_layer", bind="query-params")
        state.choose("compare_head", list(range(n_heads)))
        head = top[2].selectbox("head", list(range(n_heads)), key="compare_head", bind="query-params")
        delta, q, k = difference(maps_a, maps_b, view, layer, head)
        queries = [f"{a} | {b}" for a, b in zip(maps_a.query_tokens[view][:q], maps_b.query_tokens[view][:q])]
        keys = [f"{a} | {b}" for a, b in zip(maps_a.key_tokens[view][:k], maps_b.key_tokens[view][:k])]
        att_fig = attention_pattern(delta, queries, keys, difference=True,
                                    title=f"{VIEW_TITLES[view]}, layer {layer}, head {head}: A − B")
        chart(att_fig, key="compare-attention")
        def frame() -> pd.DataFrame:  # built when a download is clicked, not on every rerun
            return pd.DataFrame([{"layer": layer_i, "position": p, "token_a": tokens_a[p],
                                  "token_b": tokens_b[p], f"{statistic} A - B": float(diff[layer_i, p])}
                                 for layer_i in range(diff.shape[0]) for p in range(n)])
        downloads("compare", frame, lens_fig, extra={"attention_difference": {"view": view, "layer": layer,
                                                                               "head": head, "values": delta}})
