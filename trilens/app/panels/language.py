"""The Lens tab's "by language" view (models with a language map): per layer, the gold answer's rank in each
language, the language of the lens's top tokens and the closeness of parallel prompts (Lost in Multilinguality)."""

from __future__ import annotations

import streamlit as st

from .. import state
from ..language_data import zoo_fact_lines
from .common import chart, downloads, shown_errors

FIGURES = {"answer rank": "rank", "language of the top tokens": "share", "parallel prompts": "cosine"}


def language_panel(source: str) -> None:
    if "language_prompts" not in st.session_state:
        st.session_state["language_prompts"] = zoo_fact_lines() if source.startswith("zoo:") else ""
    with st.form("language-form", border=False):
        text = st.text_area("one prompt per line: `language | prompt | answer` (add `| lang=answer` for the answer in "
                            "another language; the i-th prompt of each language asks the same fact)",
                            key="language_prompts", height=200)
        k = st.number_input("top tokens whose language is counted", 1, 50, 10, key="language_k")
        st.form_submit_button("Read by language", type="primary")
    if not text.strip():
        st.info("Write prompts to read, one per line.")
        return
    with shown_errors():
        with state.timed("language lens"):
            result = state.language(source, text, int(k))
        accuracy = result.accuracy()
        cols = st.columns(len(accuracy) + 1)
        for col, (lang, value) in zip(cols, accuracy.items()):
            col.metric(f"accuracy, {lang} prompts", f"{value:.2f}")
        consistency = result.consistency()
        if consistency:
            cols[-1].metric("consistency " + ", ".join(f"{a}-{b}" for a, b in consistency),
                            ", ".join(f"{v:.2f}" for v in consistency.values()))
        shown = st.radio("figure", list(FIGURES), key="language_figure", horizontal=True, bind="query-params")
        if FIGURES[shown] == "cosine" and not result.pairs:
            st.info("No fact is asked in two languages here, so there is no pair of parallel prompts to compare.")
            return
        figure = result.figure(FIGURES[shown])
        chart(figure, key="language-figure")
        downloads("language-lens", result.layer_frame, figure)
