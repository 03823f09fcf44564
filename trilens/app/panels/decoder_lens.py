"""Decoder lens: what the decoder outputs when it reads each encoder layer (encoder-decoders only; no other tool
shows this), scored against the reference."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ...viz import curves
from .. import state
from ..inputs import AppInput
from .common import chart, downloads, shown_errors


@st.fragment
def decoder_lens_panel(source: str, inp: AppInput, family: str) -> None:
    if family != "encoder-decoder":
        st.info(f"The decoder lens runs an encoder-decoder's decoder on each encoder layer's output. This model is "
                f"{family}: it has no {'decoder' if family == 'encoder' else 'encoder'} to read with; its layers are "
                "in the Lens tab.")
        return
    with shown_errors():
        prep = state.prepared(source, inp.text, inp.target)
        with state.timed("decoder lens"):
            generated, teacher = state.decoder_lens(source, inp.text, prep.target)
        whose = "the model's own greedy output" if prep.target_generated else "the target you typed"
        st.markdown(f"**source:** {inp.text}  \n**reference:** {prep.target} ({whose})")
        frame = pd.DataFrame({
            "encoder layer": list(range(generated.n_layers)),
            "decoder output (greedy)": [outs[0] for outs in generated.outputs],
            "exact match": [v[0] for v in generated.scores["exact_match"]],
            "chrF": [v[0] for v in generated.scores["chrf"]],
            "reference log-prob": [v[0] for v in teacher.scores["target_logprob"]],
            "token accuracy": [v[0] for v in teacher.scores["token_accuracy"]],
        })
        st.dataframe(frame, hide_index=True, key="decoder-lens-table",
                     column_config={"exact match": st.column_config.CheckboxColumn(),
                                    "chrF": st.column_config.ProgressColumn(min_value=0, max_value=100, format="%.0f"),
                                    "token accuracy": st.column_config.ProgressColumn(min_value=0, max_value=1,
                                                                                      format="%.2f")})
        layers = frame["encoder layer"].tolist()
        figure = curves(layers, {"chrF / 100": frame["chrF"].to_numpy() / 100,
                                 "token accuracy (teacher-forced)": frame["token accuracy"].to_numpy()},
                        title="the decoder reading each encoder layer", x_title="encoder layer read (0 = embeddings)",
                        y_title="score")
        chart(figure, key="decoder-lens-curves")
        downloads("decoder-lens", frame, figure, extra={"source": inp.text, "reference": prep.target})
