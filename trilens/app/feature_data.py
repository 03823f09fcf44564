"""Feature neurons for the app: a trained GRADIEND's reading of the current input, and its rewrite grid (the training
folder itself is read by ``trilens.features.folder``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError
from ..features import (
    EncodingResult,
    FeatureRow,
    Gradiend,
    RewriteGrid,
    read_jsonl,
    rewrite_grid,
)
from .inputs import AppInput

if TYPE_CHECKING:
    from ..model import Model


def feature_row(model: Model, inp: AppInput) -> FeatureRow:
    """The page's input as a row with a class slot: an encoder's text with its mask, a decoder's prompt (the slot is
    the next token), an encoder-decoder's source with the typed target as the prefix before the slot."""
    if not inp.text.strip():
        raise InputError("the input is empty: type a text with its class slot in the sidebar.")
    if model.family == "encoder" and "[MASK]" not in inp.text and (model.tokenizer.mask_token or "[MASK]") not in inp.text:
        raise InputError("an encoder-only model reads the feature at a [MASK]: put one [MASK] where the class token goes.")
    prefix = inp.target.strip() if model.family == "encoder-decoder" else ""
    return FeatureRow(inp.text, None, prefix=prefix)


def encode_input(model: Model, gradiend: Gradiend, inp: AppInput) -> EncodingResult:
    return gradiend.encode(model, [feature_row(model, inp)])


def compute_grid(model: Model, gradiend: Gradiend, data_path: Path) -> RewriteGrid:
    return rewrite_grid(model, gradiend, read_jsonl(data_path, classes=gradiend.classes))

