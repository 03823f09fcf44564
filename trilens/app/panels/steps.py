"""Attention over steps: as the model generates, where does its attention go and how sensitive is it to the source
(after Fu et al. 2023); and where each output token's information comes from (relevancy, rollout, flow)."""

from __future__ import annotations

import streamlit as st

from ...attention.steps_result import TITLES
from .. import state
from ..inputs import AppInput
from .common import chart, downloads, shown_errors

MAP_TITLES = {"relevancy": "relevancy (Chefer et al. 2021)", "rollout": "rollout", "flow": "flow"}


@st.fragment
def steps_panel(source: str, inp: AppInput, family: str) -> None:
    with shown_errors():
        prep = state.prepared(source, inp.text, inp.target)
        with state.timed("attention over steps"):
            view = state.steps(source, inp.text, inp.target)
        if view.steps is None:
            st.info("An encoder-only model does not generate, so it has no steps to follow; below is where its "
                    "prediction at the mask comes from (at the first token where the text has no mask).")
        else:
            _curves(view.steps, prep.target_generated or family == "decoder")
        _maps(view.maps, family)


def _curves(result, generated: bool) -> None:
    names = result.names
    first = "source_mass" if "source_mass" in names else "sensitivity" if "sensitivity" in names else names[0]
    if "steps_metric" not in st.query_params:
        st.session_state.setdefault("steps_metric", first)
    state.choose("steps_metric", names, first)
    left, right = st.columns([3, 1])
    with right:
        st.selectbox("metric", names, key="steps_metric", bind="query-params", format_func=lambda n: TITLES.get(n, n))
        by = st.radio("lines", ["layer", "all"], key="steps_by", horizontal=True,
                      format_func={"layer": "one per layer", "all": "mean of layers"}.get)
        st.caption(("Steps of the model's own greedy continuation. " if generated else "Steps of the target. ")
                   + "Source sensitivity: a 32-direction estimate of ‖∂h/∂E_src‖, divided by step 1's. Definitions "
                   "after Fu et al. 2023 (Decoder-Only or Encoder-Decoder?).")
    with left:
        figure = result.figure(st.session_state["steps_metric"], by=by)
        chart(figure, key="steps-curves")
    downloads("attention-steps", result.to_frame, figure)


def _maps(maps, family: str) -> None:
    st.subheader("Where each output token comes from")
    methods = maps.methods
    state.choose("map_method", methods)
    parts = ["source"] + (["prefix"] if family != "encoder" else [])
    state.choose("map_part", parts)
    left, right = st.columns([3, 1])
    with right:
        st.selectbox("method", methods, key="map_method", bind="query-params", format_func=MAP_TITLES.get)
        st.radio("tokens", parts, key="map_part", horizontal=True,
                 format_func={"source": "source", "prefix": "output so far"}.get)
        if "flow" not in methods and family != "encoder-decoder":
            st.caption("Flow is left out above 64 tokens (it solves tokens² max-flow problems).")
    with left:
        figure = maps.figure(st.session_state["map_method"], part=st.session_state["map_part"])
        chart(figure, key="steps-map")
    downloads("relevancy", maps.to_frame, figure)
