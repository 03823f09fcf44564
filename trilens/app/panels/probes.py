"""Probes: layerwise probe curves with the control task, from a saved result or a small uploaded data set."""

from __future__ import annotations

import streamlit as st

from .. import state
from ..probe_data import MAX_PROBE_ROWS, load_probe
from .common import chart, downloads, shown_errors

SAVED, UPLOAD = "a saved probe result", "probe a JSON-lines file"


@st.fragment
def probes_panel(source: str) -> None:
    mode = st.radio("probes from", [SAVED, UPLOAD], key="probe_mode", horizontal=True, bind="query-params")
    with shown_errors():
        if mode == SAVED:
            path = st.text_input("folder of a saved ProbeResult (`result.save(folder)`, `trilens probe ... --out`)",
                                 key="probe_path", bind="query-params")
            if not path.strip():
                st.info("Give the folder of a saved probe result, or switch to probing a JSON-lines file.")
                return
            result = load_probe(path.strip())
        else:
            upload = st.file_uploader(f"JSON lines with \"text\" (or \"source\" and \"target\") and a label field; at "
                                      f"most {MAX_PROBE_ROWS} rows", type=["jsonl"], key="probe_upload")
            label = st.text_input("label field", key="probe_label", value="label")
            if upload is None:
                st.info("Upload a .jsonl file to probe every layer of this model for its label (3 folds, with the "
                        "Hewitt & Liang control task).")
                return
            with st.spinner("Probing every layer…"), state.timed("probes"):
                result = state.probe(source, upload.getvalue(), label.strip())
        figure = result.figure()
        chart(figure, key="probe-curves")
        table = result.table()
        st.dataframe(table, hide_index=True, key="probe-table")
        downloads("probes", table, figure, extra={"info": result.info})
