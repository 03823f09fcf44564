"""Feature neurons: a trained GRADIEND reads the current input (its feature value h, +1 for one class, -1 for the
other, near 0 for neither), with its training curve, its held-out encodings and the rewrite grid."""

from __future__ import annotations

import streamlit as st

from .. import state
from ..inputs import AppInput
from .common import chart, downloads, shown_errors

GRID_METRICS = ("bpi_lms", "a_directed_lms", "b_directed_lms", "p_a", "p_b", "lms")


@st.fragment
def features_panel(source: str, inp: AppInput, family: str) -> None:
    path = st.text_input("folder of a trained GRADIEND (`trilens gradiend train MODEL --out DIR`)", key="feat_path",
                         bind="query-params")
    if not path.strip():
        st.info("Train a feature neuron from the command line, e.g. `trilens gradiend train zoo:bert --out feature "
                "--grid` (the zoo's names task: she vs he), then give its folder here to read the current input.")
        return
    with shown_errors():
        stamp = state.feature_stamp(path.strip())
        bundle = state.feature_bundle(path.strip())
        g = bundle.gradiend
        a, b = g.classes
        st.markdown(f"**{g.summary()}**")
        with shown_errors(), state.timed("feature value"):
            enc = state.feature_value(source, path.strip(), stamp, inp.text, inp.target)
            value = float(enc.values[0, 0])
            st.metric(f"feature value h of this input (+1 = {a}, -1 = {b})", f"{value:+.3f}")
            st.caption(f"The gradient read at the slot was taken for the token {enc.tokens[0]!r} (the model's own "
                       "prediction); a class token's gradient is read toward the other class, as in training.")
        left, right = st.columns(2)
        with left:
            curve = g.figure()
            chart(curve, key="feat-curve")
            downloads("gradiend-training", g.to_frame, curve)
        with right:
            if bundle.encodings is not None:
                values = bundle.encodings.figure()
                chart(values, key="feat-values")
                downloads("gradiend-encodings", bundle.encodings.to_frame, values)
        _grid(source, path.strip(), stamp, bundle)


def _grid(source: str, path: str, stamp: float, bundle) -> None:
    grid = bundle.grid
    if grid is None and bundle.data_path is None:
        st.info("No rewrite grid: the folder has neither a rewrite_grid nor the data.jsonl to compute one.")
        return
    if grid is None:
        if not st.session_state.get("feat_grid_requested") == path:
            st.info("The rewrite grid scores 54 rewritten copies of the model on the held-out texts.")
            if st.button("Compute the rewrite grid", key="feat_grid_compute"):
                st.session_state["feat_grid_requested"] = path
            else:
                return
        with st.spinner("rewriting and scoring 54 copies…"), state.timed("rewrite grid"):
            grid = state.feature_grid(source, path, stamp)
    metric = st.selectbox("rewrite grid: metric", GRID_METRICS, key="feat_metric", bind="query-params")
    figure = grid.figure(metric)
    chart(figure, key="feat-grid")
    best = [{"metric": m, **(grid.best(m) or {})} for m in ("bpi", "a_directed", "b_directed")]
    st.dataframe(best, hide_index=True, key="feat-best")
    downloads("rewrite-grid", grid.to_frame, figure)
