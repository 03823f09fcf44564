"""Lens: what each layer believes at each position (logit lens, or a saved tuned lens), and the target token's rank
per layer."""

from __future__ import annotations

import streamlit as st

from ...viz import curves
from .. import state
from ..inputs import AppInput
from ..lens_data import LENS_STATISTICS, statistics
from .common import chart, downloads, shown_errors
from .language import language_panel

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
            res = state.lens(source, inp.text, inp.target, tuned.strip())
        if family == "encoder-decoder":
            st.caption("The decoder's layers, reading the target. What each encoder layer holds: the Decoder lens tab.")
        shown = statistics(res)
        state.choose("lens_statistic", shown)
        statistic = st.selectbox("statistic", shown, key="lens_statistic", bind="query-params")
        figure = res.figure(metric=LENS_STATISTICS[statistic])  # the result's own figure, as in a notebook
        chart(figure, key="lens-heatmap")
        words, scored_against = res.tokens(), res.target_tokens()
        scored = [p for p, t in enumerate(scored_against) if t]
        if scored and "target rank" in shown:
            labels = {p: f"{p}: {words[p]} → {scored_against[p]}" for p in scored}
            state.choose("rank_position", scored, scored[-1])
            if "rank_position" not in st.query_params:  # default: the last scored position (the prediction)
                st.session_state.setdefault("rank_position", scored[-1])
            position = st.selectbox("target token's rank per layer, at position", scored,
                                    format_func=labels.__getitem__, key="rank_position", bind="query-params")
            ranks = res.values("target_rank")[:, position].numpy()
            chart(curves(list(range(res.n_layers)), {f"rank of “{scored_against[position]}”": ranks + 1},
                         title="target rank per layer (1 = top)", y_title="rank", log_y=True), key="lens-rank")
        downloads("lens", res.to_frame, figure)
