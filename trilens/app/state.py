"""Everything the page keeps between reruns: loaded models (at most two, each with a lock), per-input results as
small cached arrays keyed on (model, input, settings), and per-panel timings for the debug view.

Only this module (and the panels) import Streamlit; the compute modules stay plain functions.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import streamlit as st

import trilens
from trilens import Model

from ..features.folder import FeatureFolder, read_feature_folder
from .attention_data import AttentionMaps, attention_maps
from .attribution_data import AttributionSettings, attribution_view
from .feature_data import compute_grid, encode_input
from .inputs import AppInput, Prepared, prepare
from .language_data import language_view
from .lens_data import lens_result, load_tuned
from .patching_data import PatchSettings, atp, exact_part
from .prediction import Prediction, predict
from .probe_data import run_probe
from .steps_data import StepsView, steps_view

ZOO_MODELS = ("zoo:gpt", "zoo:bert", "zoo:t5", "zoo:gpt-bi", "zoo:t5-bi", "zoo:minilm")
LOCAL = "a local model folder…"
DEFAULT_INPUTS = {  # what each zoo model was trained on (trilens.zoo.tasks), so the first page shows real behaviour
    "zoo:gpt": AppInput("not ( T and F ) ="),
    "zoo:bert": AppInput("not ( T and F ) = [MASK]"),
    "zoo:t5": AppInput("f c e h b a >", "a b h e c f"),
    "zoo:gpt-bi": AppInput("the colour of terb is"),
    "zoo:t5-bi": AppInput("terbo ta kolo nim", "rubo"),
    "zoo:minilm": AppInput("The cat sat on the mat because it was tired."),
}
FALLBACK_INPUT = AppInput("The quick brown fox jumps over the lazy dog.")
T = TypeVar("T")


@dataclass
class Loaded:
    """A model and the lock that keeps two browser tabs from running hooks on it at once."""

    model: Model
    lock: threading.RLock


def _release(loaded: Loaded) -> None:
    del loaded.model
    gc.collect()


@st.cache_resource(max_entries=2, show_spinner=False, on_release=_release)
def load_model(source: str) -> Loaded:
    """``trilens.load(source)``, kept for every session (at most two models at once)."""
    return Loaded(trilens.load(source), threading.RLock())


def default_input(source: str) -> AppInput:
    return DEFAULT_INPUTS.get(source, FALLBACK_INPUT)


@contextmanager
def timed(what: str):
    """Record how long ``what`` took for the debug view."""
    start = time.perf_counter()
    try:
        yield
    finally:
        st.session_state.setdefault("timings", {})[what] = time.perf_counter() - start


def _run(source: str, fn: Callable[[Model], T]) -> T:
    loaded = load_model(source)
    with loaded.lock:
        return fn(loaded.model)


@st.cache_data(max_entries=64, show_spinner=False)
def prepared(source: str, text: str, target: str) -> Prepared:
    return _run(source, lambda m: prepare(m, AppInput(text, target)))


def _on_input(source: str, text: str, target: str, fn: Callable[[Model, Prepared], T]) -> T:
    """``fn(model, prepared input)`` under the model's lock."""
    prep = prepared(source, text, target)
    return _run(source, lambda m: fn(m, prep))


@st.cache_data(max_entries=16, show_spinner=False)
def attention(source: str, text: str, target: str) -> AttentionMaps:
    return _on_input(source, text, target, attention_maps)


@st.cache_data(max_entries=32, show_spinner=False)
def lens(source: str, text: str, target: str, tuned_path: str = "") -> Any:
    """The input's ``LensResult`` (logit lens, or the tuned lens saved at ``tuned_path``)."""
    return _on_input(source, text, target,
                     lambda m, prep: lens_result(m, prep, load_tuned(m, tuned_path) if tuned_path else None))


@st.cache_data(max_entries=16, show_spinner=False)
def language(source: str, text: str, k: int) -> Any:
    return _run(source, lambda m: language_view(m, text, k))


@st.cache_data(max_entries=32, show_spinner=False)
def prediction(source: str, text: str, target: str) -> Prediction:
    return _on_input(source, text, target, predict)


@st.cache_data(max_entries=16, show_spinner=False)
def decoder_lens(source: str, text: str, reference: str) -> Any:
    from ..lens import decoder_lens as run

    def go(m: Model) -> Any:
        generated = run(m, [text], references=[reference])
        teacher = run(m, [text], references=[reference], mode="teacher")
        return generated, teacher

    return _run(source, go)


@st.cache_data(max_entries=16, show_spinner=False)
def steps(source: str, text: str, target: str) -> StepsView:
    return _on_input(source, text, target, steps_view)


@st.cache_data(max_entries=16, show_spinner=False)
def attribution(source: str, text: str, target: str, settings: AttributionSettings) -> Any:
    return _on_input(source, text, target, lambda m, prep: attribution_view(m, prep, settings))


@st.cache_data(max_entries=16, show_spinner=False)
def patching_atp(source: str, settings: PatchSettings) -> Any:
    return _run(source, lambda m: atp(m, settings))


@st.cache_data(max_entries=64, show_spinner=False)
def patching_part(source: str, settings: PatchSettings, part: str) -> Any:
    """One part (a site kind, or the heads) of the exact sweep: the panel shows progress between parts."""
    return _run(source, lambda m: exact_part(m, settings, part))


@st.cache_data(max_entries=8, show_spinner=False)
def probe(source: str, data: bytes, label: str) -> Any:
    return _run(source, lambda m: run_probe(m, data, label))


def feature_stamp(path: str) -> float:
    """When the folder ``path`` last changed (0 if it does not exist): part of every cache key of a feature folder."""
    from pathlib import Path

    folder = Path(path).expanduser()
    return folder.stat().st_mtime if folder.exists() else 0.0


@st.cache_resource(max_entries=2, show_spinner=False)
def _feature(path: str, stamp: float) -> FeatureFolder:
    return read_feature_folder(path)


def feature_bundle(path: str) -> FeatureFolder:
    """A trained GRADIEND folder, kept while unchanged on disk."""
    return _feature(path, feature_stamp(path))


@st.cache_data(max_entries=32, show_spinner=False)
def feature_value(source: str, path: str, stamp: float, text: str, target: str) -> Any:
    bundle = _feature(path, stamp)
    return _run(source, lambda m: encode_input(m, bundle.gradiend, AppInput(text, target)))


@st.cache_data(max_entries=4, show_spinner=False)
def feature_grid(source: str, path: str, stamp: float) -> Any:
    bundle = _feature(path, stamp)
    return _run(source, lambda m: compute_grid(m, bundle.gradiend, bundle.data_path))


def choose(key: str, options: list[T], default: T | None = None) -> None:
    """Before a widget with ``key`` is drawn: a remembered (or URL) value that this input no longer has goes back to
    ``default`` (a new, shorter input leaves old layer, head or token indices out of range)."""
    if key in st.session_state and st.session_state[key] not in options:
        st.session_state[key] = default if default is not None else options[0]
