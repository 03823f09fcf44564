"""Patching: which component, at which position, carries the difference between a clean and a corrupted input.
Attribution patching (AtP) estimates every cell at once; the exact sweep (one patched run per cell, batched) waits for
the Compute button and shows its progress; with heads, a layer x head grid at a chosen position (no clicks needed)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ...viz import panel_heatmaps
from .. import state
from ..inputs import AppInput
from ..patching_data import (
    METRICS,
    PatchSettings,
    corrupt,
    head_grid_values,
    head_panels,
    merge,
    parts,
    strongest_position,
)
from .common import chart, downloads, shown_errors

FIELDS = ("patch_clean", "patch_corrupted", "patch_token", "patch_foil", "patch_metric", "patch_heads")


@st.fragment
def patching_panel(source: str, inp: AppInput, family: str) -> None:
    with shown_errors():
        target = state.prepared(source, inp.text, inp.target).target if family == "encoder-decoder" else ""
        _prefill(source, inp)
        settings = _form(family, target)
        if not settings.corrupted.strip():
            st.info("Type a corrupted input above: the clean one with a token changed (one name for another, T for F), "
                    "of the same token length. Patching then finds where the difference is carried.")
            return
        if target:
            st.caption(f"Both runs are teacher-forced on the sidebar's target “{target}”.")
        left, right = st.columns(2)
        with left, state.timed("patching (AtP)"):
            atp = state.patching_atp(source, settings)
            figure = atp.figure()
            chart(figure, key="patch-atp")
            downloads("patching-atp", atp.to_frame, figure, extra={"info": atp.info})
        with right:
            exact = _exact(source, settings, family, atp)
        shown = atp if exact is None else exact
        top = shown.top(10)
        if not top:
            st.info("The clean and corrupted runs score the same, so no cell can be normalised: change the corrupted "
                    "input, or the token and foil.")
            return
        st.markdown(f"**Top cells** ({'AtP' if exact is None else 'exact'}; normalised: 1 = the clean run's metric, "
                    "0 = the corrupted run's)")
        st.dataframe(pd.DataFrame(top).drop(columns=["stack", "kind"]), hide_index=True, key="patch-top")
        if settings.heads:
            _head_grid(shown)


def _prefill(source: str, inp: AppInput) -> None:
    """A new sidebar input refills the inputs (zoo models: the corrupted copy too); fields Streamlit dropped while
    another tab was open come back as they were."""
    marker = (source, inp.text)
    if st.session_state.get("patch_for") != marker:
        st.session_state["patch_for"] = marker
        st.session_state["patch_clean"] = inp.text
        st.session_state["patch_corrupted"] = corrupt(inp.text) if source.startswith("zoo:") else ""
    for key, value in st.session_state.get("patch_kept", {}).items():
        st.session_state.setdefault(key, value)


def _form(family: str, target: str) -> PatchSettings:
    metrics = [m for m in METRICS if not (m == "steps" and family == "encoder")]
    state.choose("patch_metric", metrics, "logit_diff")
    with st.form("patch-form"):
        a, b = st.columns(2)
        clean_title = "clean source" if family == "encoder-decoder" else "clean input"
        a.text_input(clean_title, key="patch_clean")
        b.text_input(clean_title.replace("clean", "corrupted"), key="patch_corrupted")
        c, d, e, f = st.columns([1, 1, 2, 1])
        c.text_input("token (optional)", key="patch_token", help="score this token's logit")
        d.text_input("foil (optional)", key="patch_foil", help="minus this token's logit")
        e.selectbox("metric", metrics, key="patch_metric", format_func=METRICS.get,
                    help="logit difference: the token's logit minus the foil's; without them, the clean prediction's "
                         "logit minus the corrupted prediction's. KL: the whole next-token distribution. Target "
                         "log-prob: every teacher-forced step (minus the foil's).")
        f.checkbox("heads", key="patch_heads", help="patch each attention head's output too")
        st.form_submit_button("Apply", type="primary")
    values = {k: st.session_state.get(k) for k in FIELDS}
    st.session_state["patch_kept"] = values
    return PatchSettings(values["patch_clean"] or "", values["patch_corrupted"] or "", target, values["patch_token"] or "",
                         values["patch_foil"] or "", values["patch_metric"] or "logit_diff", bool(values["patch_heads"]))


def _exact(source: str, settings: PatchSettings, family: str, atp):
    """The exact sweep once Compute was pressed for these settings (None before), with a progress bar over its parts."""
    key = (source, settings)
    if st.session_state.get("patch_requested") != key:
        cells = sum(int(v.isfinite().sum()) for v in atp.values.values())
        st.info(f"The exact sweep patches each of the {cells} cells in its own run (batched): press Compute. "
                "The AtP estimate on the left is its first-order approximation.")
        if not st.button("Compute", key="patch_compute", type="primary"):
            return None
        st.session_state["patch_requested"] = key
    todo = parts(family, settings.heads)
    bar = st.progress(0.0, text="activation patching…")
    done = []
    with state.timed("patching (exact)"):
        for i, part in enumerate(todo):
            bar.progress(i / len(todo), text=f"patching {part} ({i + 1} of {len(todo)})")
            done.append(state.patching_part(source, settings, part))
    bar.empty()
    exact = merge(done)
    figure = exact.figure()
    chart(figure, key="patch-exact")
    agreement = exact.compare(atp)["all"]
    st.caption(f"AtP vs exact over {agreement['cells']} cells: Spearman {agreement['spearman']:.2f}, top-"
               f"{agreement['k']} recall {agreement['top_k_recall']:.0%}.")
    downloads("patching-exact", exact.to_frame, figure, extra={"info": exact.info})
    return exact


def _head_grid(result) -> None:
    keys = head_panels(result)
    if not keys:
        return
    a, b = st.columns(2)
    state.choose("patch_head_panel", keys)
    key = a.selectbox("head grid: heads of", keys, key="patch_head_panel")
    panel = result.panel(key)
    tokens = result.tokens[panel.position_stack][0]
    positions = list(range(result.values[key].shape[2]))
    if st.session_state.get("patch_head_for") != (key, tokens):  # a new input or panel: its strongest position
        st.session_state["patch_head_for"] = (key, tokens)
        st.session_state["patch_head_position"] = strongest_position(result, key)
    state.choose("patch_head_position", positions, strongest_position(result, key))
    def label(p: int) -> str:
        return f"{p}: {tokens[p]}" if p < len(tokens) else str(p)

    position = b.selectbox("at position", positions, key="patch_head_position", format_func=label)
    grid = head_grid_values(result, key, position)
    figure = panel_heatmaps([{"z": grid, "x": [f"H{h}" for h in range(grid.shape[1])],
                              "y": [f"L{layer}" for layer in range(grid.shape[0])], "title": key, "x_title": "head",
                              "y_title": "layer"}],
                            title=f"{key} heads at {label(position)}", colorbar="normalised metric (1 = clean)")
    chart(figure, key="patch-heads")
    frame = pd.DataFrame([{"panel": key, "position": position, "layer": layer, "head": head,
                           "normalised": float(grid[layer, head])}
                          for layer in range(grid.shape[0]) for head in range(grid.shape[1])])
    downloads("patching-heads", frame, figure)
