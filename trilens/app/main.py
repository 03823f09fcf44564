"""The page Streamlit runs (``trilens app [MODEL]``): the sidebar (model, family, input) and one tab per view."""

from __future__ import annotations

import argparse
import os
import sys

import streamlit as st

from trilens.app import state
from trilens.app.inputs import MAX_TOKENS, AppInput
from trilens.app.tabs import TABS, TITLES, View
from trilens.errors import TrilensError

DEFAULT_MODEL = "zoo:t5"
MODEL_ENV = "TRILENS_APP_MODEL"  # how `trilens app MODEL` (and tests) choose the first model


def _start_model() -> str:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--model", default=None)
    args, _ = parser.parse_known_args(sys.argv[1:])
    return args.model or os.environ.get(MODEL_ENV) or DEFAULT_MODEL


def _on_model_change() -> None:
    """A new model starts from its own example input (and from layer 0, head 0)."""
    source = _source()
    if source:
        example = state.default_input(source)
        st.session_state["text"], st.session_state["target"] = example.text, example.target


def _source() -> str:
    choice = st.session_state.get("model")
    if choice == state.LOCAL:
        return st.session_state.get("folder", "").strip()
    return choice or ""


def sidebar() -> tuple[str, object | None, object | None]:
    start = _start_model()
    options = list(state.ZOO_MODELS)
    if start not in options:
        options.insert(0, start)
    options.append(state.LOCAL)
    with st.sidebar:
        st.title("trilens")
        st.selectbox("model", options, index=options.index(start), key="model", on_change=_on_model_change,
                     bind="query-params")
        if st.session_state["model"] == state.LOCAL:
            st.text_input("model folder (an HF checkpoint saved with save_pretrained)", key="folder",
                          on_change=_on_model_change, bind="query-params")
        source = _source()
        if not source:
            st.info("Type the folder of a model saved with `save_pretrained` (config, weights and tokenizer).")
            return "", None, None
        try:
            with st.spinner(f"Loading {source}…"), state.timed("load model"):
                loaded = state.load_model(source)
        except TrilensError as err:
            st.error(f"{source} cannot be loaded: {err}")
            return "", None, None
        except (OSError, ValueError, KeyError) as err:  # HF's own errors for a folder that is not a checkpoint
            st.error(f"{source} is not a model trilens can load ({type(err).__name__}: {err}). Give a folder with a "
                     "config.json, the weights and a tokenizer.")
            return "", None, None
        model = loaded.model
        st.badge(model.family, color={"encoder": "blue", "decoder": "green", "encoder-decoder": "violet"}[model.family])
        st.caption(f"{model.architecture} · " + ", ".join(f"{s} {n} layers" for s, n in model.n_layers.items())
                   + f" · {sum(model.n_heads.values()) // len(model.n_heads)} heads · d_model {model.d_model}")
        if not getattr(model, "has_trained_head", True):
            st.caption("No trained LM head: predictions and lenses are unavailable; attention works.")
        example = state.default_input(source)
        for key, value in (("text", example.text), ("target", example.target)):
            if key not in st.query_params:  # a shared URL's input wins over the example
                st.session_state.setdefault(key, value)
        with st.form("input-form"):
            enc_dec = model.family == "encoder-decoder"
            st.text_area("source" if enc_dec else "text", key="text", height=90, bind="query-params")
            if enc_dec:
                st.text_area("target (empty: the model's own greedy output)", key="target", height=68,
                             bind="query-params")
            st.form_submit_button("Analyse", type="primary")
        st.caption(f"Up to {MAX_TOKENS} tokens per stack." + (" `[MASK]` marks a slot to predict."
                                                                 if model.family == "encoder" else ""))
        timings = st.empty()  # filled once the panels have run
    return source, model, timings


def show_timings(slot) -> None:
    """Per-step timings of this run (a panel's own reruns update its line the next time the page runs)."""
    with slot.container(), st.expander("timings"):
        for what, seconds in st.session_state.get("timings", {}).items():
            st.text(f"{what}: {seconds:.2f} s")


def main() -> None:
    st.set_page_config(page_title="trilens", layout="wide")
    source, model, timings = sidebar()
    if model is None:
        st.markdown("### trilens\nPick a model in the sidebar.")
        return
    inp = AppInput(st.session_state.get("text", ""), st.session_state.get("target", "") if model.family ==
                   "encoder-decoder" else "")
    view = View(source, inp, model)
    for container, tab in zip(st.tabs(TITLES, key="tab", bind="query-params", on_change="rerun"), TABS):
        if container.open:
            with container:
                tab.draw(view)
    show_timings(timings)


main()
