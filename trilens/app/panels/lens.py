"""Lens: what each layer believes at each position (logit lens, or a saved tuned lens), and the target token's rank
per layer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from ...viz import curves, layer_heatmap
from .. import state
from ..inputs import AppInput
from ..lens_data import LENS_STATISTICS
from .common import chart, downloads, shown_errors
from .language import language_panel

COLOURS = {"top-1 probability": "Blues", "entropy": "Viridis", "KL to final": "Reds", "target rank": "Viridis_r"}


@st.fragment
def lens_panel(source: str, inp: AppInput, family: str, has_languages: bool = False) -> None:
    top = st.columns([1, 3])
    kinds = ["logit", "tuned"] + (["by language"] if has_languages and family != "encoder" else [])
    state.choose("lens", kinds)
    kind = top[0].radio("lens", kinds, key="lens", horizontal=True, bind="query-params")
    if kind == "by language":
        language_panel(source)
        return
    tuned = ""
    if kind == "tuned":
        tuned = top[1].text_input("tuned lens folder (saved with TunedLens.save)", key="tuned", bind="query-params")
        if not tuned.strip():
            st.info("Give the folder of a tuned lens trained for this model (`TunedLens.fit(...)`, then `.save(folder)`).")
            return
    with shown_errors():
        with state.timed("lens"):
            view = state.lens(source, inp.text, inp.target, tuned.strip())
        if family == "encoder-decoder":
            st.caption("The decoder's layers, reading the target. What each encoder layer holds: the Decoder lens tab.")
        state.choose("lens_statistic", view.statistics)
        statistic = st.selectbox("statistic", view.statistics, key="lens_statistic", bind="query-params")
        unit = LENS_STATISTICS[statistic][1]
        figure = layer_heatmap(view.values[statistic], view.tokens, text=view.cell_text(), hover=view.hover_text(),
                               colorbar=unit, colorscale=COLOURS[statistic],
                               title=f"{view.lens} lens — {statistic} (cell: top-1 token; hover: top 5)")
        chart(figure, key="lens-heatmap")
        scored = [p for p, t in enumerate(view.targets) if t]
        if scored and "target rank" in view.values:
            labels = {p: f"{p}: {view.tokens[p]} → {view.targets[p]}" for p in scored}
            state.choose("rank_position", scored, scored[-1])
            if "rank_position" not in st.query_params:  # default: the last scored position (the prediction)
                st.session_state.setdefault("rank_position", scored[-1])
            position = st.selectbox("target token's rank per layer, at position", scored,
                                    format_func=labels.__getitem__, key="rank_position", bind="query-params")
            ranks = view.target_rank(position)
            chart(curves(list(range(view.n_layers)), {f"rank of “{view.targets[position]}”": ranks + 1},
                         title="target rank per layer (1 = top)", y_title="rank", log_y=True), key="lens-rank")
        def frame() -> pd.DataFrame:  # built when a download is clicked, not on every rerun
            return pd.DataFrame([{"layer": layer, "position": p, "token": tok, "target": view.targets[p],
                                  **{s: float(v[layer, p]) for s, v in view.values.items()},
                                  "top": " ".join(view.top_tokens[layer][p]),
                                  "top_probs": " ".join(f"{x:.4f}" for x in np.asarray(view.top_probs[layer, p]))}
                                 for layer in range(view.n_layers) for p, tok in enumerate(view.tokens)])
        downloads("lens", frame, figure)
