"""Attribution: which input tokens made the model produce each output token (captum's methods per generated step),
with the step scores underneath. Gradient methods run at once; integrated gradients, SHAP, DeepLift and the
perturbation methods wait for the Compute button."""

from __future__ import annotations

import streamlit as st

from ...attribution.methods import METHODS
from .. import state
from ..attribution_data import AttributionSettings
from ..inputs import AppInput
from .common import chart, downloads, shown_errors

BASELINES = ("", "zeros", "pad", "unk", "mask")


@st.fragment
def attribution_panel(source: str, inp: AppInput, family: str) -> None:
    with shown_errors():
        left, right = st.columns([3, 1])
        with right:
            settings = _settings(family)
            hidden = st.radio("per token", ["l2", "sum"], key="attr_hidden", horizontal=True,
                              format_func={"l2": "L2 norm", "sum": "sum"}.get)
            normalise = st.checkbox("normalise each step (L1)", key="attr_normalise")
            words = st.checkbox("sub-words into words", key="attr_words")
        key = (source, inp, settings)
        if settings.fast:
            st.session_state["attr_requested"] = key
        elif st.session_state.get("attr_requested") != key:
            with right:
                if st.button("Compute", key="attr_compute", type="primary"):
                    st.session_state["attr_requested"] = key
        if st.session_state.get("attr_requested") != key:
            with left:
                st.info(f"{METHODS[settings.method].description}: press Compute (it runs "
                        + (f"{settings.n_steps} interpolation points per step" if METHODS[settings.method].steps
                           else "a pass per token" if METHODS[settings.method].kind == "perturbation"
                           else "several passes") + ").")
            return
        state.prepared(source, inp.text, inp.target)
        with left, st.spinner(f"computing {settings.method} attributions…"), state.timed("attribution"):
            result = state.attribution(source, inp.text, inp.target, settings)
        shown = result.aggregate(hidden, words=words, normalise="l1" if normalise else None)
        with left:
            figure = shown.figure(0)
            chart(figure, key="attr-map")
            delta = "" if result.deltas is None else f" Largest convergence delta: {float(result.deltas.abs().max()):.3g}."
            st.caption(f"Steps of the {result.info['params']['targets']} target; score {result.info['params']['score']}."
                       + delta)
        downloads("attribution", shown.to_frame, figure)
        st.dataframe(shown.table(), hide_index=True)


def _settings(family: str) -> AttributionSettings:
    names = list(METHODS)
    state.choose("attr_method", names, "saliency")
    method = st.selectbox("method", names, key="attr_method", bind="query-params",
                          format_func=lambda n: n.replace("_", " "))
    spec = METHODS[method]
    n_steps = st.slider("interpolation points", 8, 128, 32, 8, key="attr_steps") if spec.steps else 32
    baseline = ""
    if spec.baseline != "none":
        options = [b for b in BASELINES if not (spec.kind == "layer" and b == "zeros")]
        baseline = st.selectbox("baseline", options, key=f"attr_baseline_{spec.kind}",
                                format_func=lambda b: b or "method default")
    contrast = st.text_input("contrast (why not…)", key="attr_contrast",
                             help="a text aligned to the target, one token per step (encoder-only: the foil token)")
    return AttributionSettings(method, n_steps, baseline, contrast)
