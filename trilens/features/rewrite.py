"""Rewriting a model with a GRADIEND's decoder: θ' = θ + α·dec(h), always on a copy (the original is never touched).

``rewrite`` returns the rewritten copy as a new ``Model``; ``save_model`` writes any model as an HF folder that
``trilens.load`` (and ``transformers``) read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..atomic import atomic_dir
from .params import ParamLayout, check_weights_shared

if TYPE_CHECKING:
    from ..model import Model
    from .gradiend import Gradiend


def hf_copy(model: Model) -> torch.nn.Module:
    """A plain HF model (no bridge inside) of the same class, with a copy of ``model``'s current weights."""
    check_weights_shared(model)
    hf = model.hf_model
    fresh = type(hf)(hf.config)
    state: dict[str, torch.Tensor] = {}
    for name, value in hf.state_dict().items():
        state.setdefault(name.replace("._original_component", ""), value)
    fresh.load_state_dict({k: state[k].detach().clone() for k in fresh.state_dict()}, strict=True)
    return fresh.eval().to(model.device)


def copy_model(model: Model, name: str | None = None) -> Model:
    """An independent ``Model`` with a copy of ``model``'s weights (and its tokenizer)."""
    from ..loading import load

    copy = load(hf_copy(model), tokenizer=model.tokenizer)
    copy.name = name or f"{model.name} (copy)"
    return copy


def save_model(model: Model, path: str | os.PathLike) -> Path:
    """Write ``model`` (weights, config, tokenizer) as an HF folder, atomically."""
    path = Path(path)
    hf = hf_copy(model)
    with atomic_dir(path) as tmp:
        hf.save_pretrained(tmp)
        if model.tokenizer is not None:
            model.tokenizer.save_pretrained(tmp)
    return path


class WeightEditor:
    """Sets ``model``'s weights to θ0 + delta on ``gradiend``'s coordinates, for any delta, and back."""

    def __init__(self, model: Model, layout: ParamLayout, keep: torch.Tensor | None):
        check_weights_shared(model, layout.names)
        params = layout.parameters(model)
        self.targets = [(params[i].detach().view(-1), index, count) for i, index, count in layout.pieces(keep)]
        with torch.no_grad():
            self.base = [flat[index].clone() for flat, index, _ in self.targets]

    @torch.no_grad()
    def set(self, delta: torch.Tensor | None) -> None:
        """θ = θ0 + ``delta`` (flat over the kept coordinates; None: θ0)."""
        start = 0
        for (flat, index, count), base in zip(self.targets, self.base):
            flat[index] = base if delta is None else base + delta[start:start + count].to(base.dtype)
            start += count


def rewrite(model: Model, gradiend: Gradiend, h: float | list[float] = 1.0, alpha: float = 1.0) -> Model:
    """A rewritten copy of ``model``: θ' = θ + ``alpha``·dec(``h``) on the GRADIEND's coordinates (``model`` is left
    as it was). ``h`` = +1 pushes toward the GRADIEND's class A, -1 toward class B, 0 toward neither."""
    copy = copy_model(model, name=f"{model.name} (GRADIEND h={h}, α={alpha})")
    WeightEditor(copy, gradiend.layout, gradiend.keep).set(float(alpha) * gradiend.direction(h))
    return copy


def rewrite_info(gradiend: Gradiend, h: Any, alpha: float) -> dict[str, Any]:
    return {"classes": list(gradiend.classes), "h": h, "alpha": alpha, "source": gradiend.source}
