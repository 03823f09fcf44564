"""Which weights a feature reads and writes: a named subset of the model's parameters laid out as one flat vector."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError

if TYPE_CHECKING:
    from ..model import Model


@dataclass
class ParamLayout:
    """Parameters ``names`` (shapes ``shapes``) concatenated, flattened, in this order into one vector."""

    names: list[str]
    shapes: list[tuple[int, ...]]

    def __post_init__(self) -> None:
        self.shapes = [tuple(s) for s in self.shapes]
        sizes = [int(torch.Size(s).numel()) for s in self.shapes]
        self.offsets = [0]
        for n in sizes:
            self.offsets.append(self.offsets[-1] + n)

    @property
    def size(self) -> int:
        return self.offsets[-1]

    def parameters(self, model: Model) -> list[torch.nn.Parameter]:
        """The model's parameters in layout order (checked against the layout's shapes)."""
        named = hf_parameters(model)
        missing = [n for n in self.names if n not in named]
        if missing:
            raise InputError(f"this model has no parameter {missing[0]!r}: the feature was trained on another "
                             "architecture; load the model it was trained on.")
        params = [named[n] for n in self.names]
        for p, n, s in zip(params, self.names, self.shapes):
            if tuple(p.shape) != s:
                raise InputError(f"parameter {n!r} has shape {tuple(p.shape)} here, {s} in the feature: load the "
                                 "model the feature was trained on.")
        return params

    def flatten(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t.reshape(-1) for t in tensors])

    def parameter_of(self, coordinates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For flat ``coordinates``: the index of the parameter each lies in, and its index inside that parameter."""
        offsets = torch.tensor(self.offsets, device=coordinates.device)
        which = torch.bucketize(coordinates, offsets[1:], right=True)
        return which, coordinates - offsets[which]

    def pieces(self, keep: torch.Tensor | None) -> list[tuple[int, slice | torch.Tensor, int]]:
        """``keep`` (sorted flat coordinates; None: all) split by parameter: (parameter index, the indices inside its
        flattened tensor, how many), in layout order."""
        if keep is None:
            return [(i, slice(None), self.offsets[i + 1] - self.offsets[i]) for i in range(len(self.names))]
        which, local = self.parameter_of(keep)
        return [(i, local[which == i], int((which == i).sum())) for i in torch.unique(which).tolist()]

    def to_dict(self) -> dict[str, Any]:
        return {"names": self.names, "shapes": [list(s) for s in self.shapes]}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> ParamLayout:
        return cls(list(doc["names"]), [tuple(s) for s in doc["shapes"]])


def _hf_layout(model: Model) -> tuple[dict[str, torch.nn.Parameter], list[str]]:
    """(every HF parameter name -> the model's tensor under it, the base model's names), kept on the model."""
    cached = getattr(model, "_hf_layout", None)
    if cached is not None:
        return cached
    hf = model.hf_model
    with torch.device("meta"):
        fresh = type(hf)(hf.config)
    raw: dict[str, torch.nn.Parameter] = {}
    for name, p in hf.named_parameters(remove_duplicate=False):
        raw.setdefault(name.replace("._original_component", ""), p)
    prefix = getattr(fresh, "base_model_prefix", "")
    base = getattr(fresh, prefix, None) if prefix else None
    head = fresh.get_output_embeddings()
    head_names = {f"{m}.{n}" for m, mod in fresh.named_modules() if mod is head for n, _ in mod.named_parameters()}
    named, base_names = {}, []
    for name, _ in fresh.named_parameters():
        if name not in raw:
            raise InputError(f"trilens cannot find {type(hf).__name__}'s parameter {name!r} inside the bridged model; "
                             "please report the architecture.")
        named[name] = raw[name]
        in_base = name.startswith(prefix + ".") if isinstance(base, torch.nn.Module) and base is not fresh else name not in head_names
        if in_base:
            base_names.append(name)
    model._hf_layout = (named, base_names)
    return model._hf_layout


def hf_parameters(model: Model) -> dict[str, torch.nn.Parameter]:
    """HF's own base-model parameter names (those ``save_pretrained`` writes, the prediction head left out; a tied
    head counted once, as the embeddings) -> the model's tensors under those names (the bridge keeps HF's modules
    inside its own)."""
    named, base_names = _hf_layout(model)
    return {n: named[n] for n in base_names}


def check_weights_shared(model: Model, names: Sequence[str] | None = None) -> None:
    """Every weight the bridge adds of its own (GPT-2's split q/k/v, say) must be a view of an HF parameter, so that
    HF's names address what the forward reads; refuse rather than read or write the wrong weights. Two things break
    it: a dtype or device change of ``model.hf_model`` after loading (it copies each tensor on its own), and a bridge
    that computes from copies (TransformerLens's GPT-NeoX bridge copies the head-interleaved ``query_key_value``).
    With ``names`` (HF parameter names), only a bridge weight in the module of one of them is refused."""
    named, _ = _hf_layout(model)
    memory = {p.untyped_storage().data_ptr() for p in named.values()}
    for name, p in model.hf_model.named_parameters(remove_duplicate=False):
        clean = name.replace("._original_component", "")
        if clean in named or p.untyped_storage().data_ptr() in memory:
            continue
        module = clean.rsplit(".", 2)[0]  # "...attention.q.weight" -> "...attention"
        hit = [n for n in names if n.startswith(f"{module}.")] if names is not None else [clean]
        if hit:
            raise InputError(
                f"the forward reads {clean!r}, which is not part of the HF parameter {hit[0]!r} it comes from: either "
                f"model.hf_model was moved with .to(dtype or device) after loading (load the model again, giving dtype= and "
                f"device= to trilens.load; model.to(device) is fine), or TransformerLens's {model.architecture} bridge "
                f"computes from a copy of it (GPT-NeoX's fused query_key_value): leave {module} out (params= / "
                f"exclude=, e.g. exclude='*.attention.*').")


def aliases(model: Model, params: Sequence[torch.Tensor]) -> list[list[torch.nn.Parameter]]:
    """For each of ``params``, every parameter of the bridged model that lies in its memory (itself, and views of it
    such as the bridge's split q/k/v of a joint projection): what the forward may read it through."""
    from ..devices import parameters_by_memory

    groups = parameters_by_memory(model.hf_model)
    return [groups.get(p.untyped_storage().data_ptr(), [p]) for p in params]


def select_parameters(model: Model, patterns: Sequence[str] | str | None = None,
                      exclude: Sequence[str] | str | None = None) -> ParamLayout:
    """A ``ParamLayout`` of the base model's parameters (prediction head excluded), by HF's own names, kept to names
    that match one of ``patterns`` (shell-style, e.g. ``"*.layer.5.*"``; None: all) and match none of ``exclude``."""
    if not model.has_trained_head:
        raise InputError(f"{model.name} has no trained prediction head: feature neurons read the gradient of the "
                         "model's own prediction at the class slot. Load a model with its LM head.")
    patterns = [patterns] if isinstance(patterns, str) else list(patterns or [])
    exclude = [exclude] if isinstance(exclude, str) else list(exclude or [])
    params = hf_parameters(model)
    names = list(params)
    if patterns:
        names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    names = [n for n in names if not any(fnmatch.fnmatchcase(n, p) for p in exclude)]
    if not names:
        some = ", ".join(list(params)[:6])
        raise InputError(f"no base-model parameter matches {patterns or '*'} (excluding {exclude}); names look like: "
                         f"{some}, ...")
    return ParamLayout(names, [tuple(params[n].shape) for n in names])
