"""Tokens & prediction: the tokens of each stack and what the model predicts, top 5 with probabilities."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from .. import state
from ..inputs import AppInput
from .common import downloads, html_table, shown_errors

STACK_TITLES = {"encoder": "encoder (source)", "decoder": "decoder (target)"}


@st.fragment
def tokens_panel(source: str, inp: AppInput, family: str) -> None:
    with shown_errors():
        with state.timed("tokens & prediction"):
            prep = state.prepared(source, inp.text, inp.target)
            pred = state.prediction(source, inp.text, inp.target)
        if prep.target_generated:
            st.info(f"No target given: the decoder reads the model's own greedy output, “{prep.target}”. "
                    "Type a target in the sidebar to teacher-force another one.")
        for stack, rows in pred.tokens.items():
            title = STACK_TITLES[stack] if family == "encoder-decoder" else "tokens"
            st.markdown(f"**{title}** — {len(rows)} tokens")
            st.markdown(" ".join(f"`{tok}`" for _, tok, _ in rows) or "(none)")
        if pred.generated:
            label = "greedy continuation" if family == "decoder" else "greedy output for the source"
            st.markdown(f"**{label}:** {pred.generated or '(nothing)'}")
        st.markdown(f"**prediction** — {pred.note}")
        table = pd.DataFrame(pred.rows)
        html_table(table)
        tokens = pd.DataFrame([{"stack": s, "position": p, "token": t, "id": i}
                               for s, rows in pred.tokens.items() for p, t, i in rows])
        downloads("prediction", table, extra={"tokens": tokens.to_dict(orient="records"), "generated": pred.generated})
