"""GRADIEND's decoder weights mapped onto FFN neurons, and their overlap with knowledge neurons.

An FFN neuron i of layer l owns row/column i of its layer's input projection (weight and bias) and column/row i of
its output projection. Its GRADIEND score is the summed |W_d| over those coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError

if TYPE_CHECKING:
    from ..model import Model
    from .gradiend import Gradiend

# model_type -> (stack -> name template of layer l's FFN parameters, each with the axis that indexes the neuron).
# HF's nn.Linear keeps weight [out, in]; GPT-2's Conv1D keeps weight [in, out].
FFN_PARAMETERS: dict[str, dict[str, list[tuple[str, int]]]] = {
    "bert": {"encoder": [("{base}.encoder.layer.{l}.intermediate.dense.weight", 0),
                         ("{base}.encoder.layer.{l}.intermediate.dense.bias", 0),
                         ("{base}.encoder.layer.{l}.output.dense.weight", 1)]},
    "gpt2": {"decoder": [("transformer.h.{l}.mlp.c_fc.weight", 1), ("transformer.h.{l}.mlp.c_fc.bias", 0),
                         ("transformer.h.{l}.mlp.c_proj.weight", 0)]},
    "t5": {"encoder": [("encoder.block.{l}.layer.1.DenseReluDense.wi.weight", 0),
                       ("encoder.block.{l}.layer.1.DenseReluDense.wo.weight", 1)],
           "decoder": [("decoder.block.{l}.layer.2.DenseReluDense.wi.weight", 0),
                       ("decoder.block.{l}.layer.2.DenseReluDense.wo.weight", 1)]},
}
FFN_PARAMETERS["roberta"] = FFN_PARAMETERS["bert"]


def ffn_parameters(model: Model, stack: str, layer: int) -> list[tuple[str, int]]:
    """Layer ``layer``'s FFN parameter names (HF's) in ``stack``, each with its neuron axis."""
    kind = getattr(model.config, "model_type", "")
    table = FFN_PARAMETERS.get(kind, {}).get(stack)
    if table is None:
        raise InputError(f"trilens does not know where {kind or model.architecture}'s FFN neurons lie in its weights; "
                         f"mapping GRADIEND onto neurons supports {', '.join(sorted(FFN_PARAMETERS))}.")
    base = getattr(model.hf_model, "base_model_prefix", "")
    return [(t.format(base=base, l=layer), axis) for t, axis in table]


def decoder_neuron_scores(model: Model, gradiend: Gradiend, layers: Sequence[int], stack: str | None = None,
                          feature: int = 0) -> torch.Tensor:
    """``[layers, d_ff]``: each FFN neuron's summed |W_d| (0 for coordinates the GRADIEND does not read)."""
    from ..capture.objectives import scored_stack

    stack = stack or scored_stack(model)
    weights = gradiend.decoder_weights(feature)
    index = {n: i for i, n in enumerate(gradiend.layout.names)}
    out = []
    for layer in layers:
        total = None
        for name, axis in ffn_parameters(model, stack, layer):
            if name not in index:
                continue
            i = index[name]
            block = weights[gradiend.layout.offsets[i]:gradiend.layout.offsets[i + 1]]
            block = block.reshape(gradiend.layout.shapes[i]).abs()
            per = block if block.dim() == 1 else block.sum(dim=1 - axis)
            total = per if total is None else total + per
        if total is None:
            raise InputError(f"the GRADIEND reads none of layer {layer}'s FFN weights in the {stack}.")
        out.append(total)
    return torch.stack(out)


def overlap_with(scores: torch.Tensor, neurons: dict[str, list[tuple[int, int]]], layers: Sequence[int]) -> dict[str, Any]:
    """How many knowledge neurons (all classes) are among the ``k`` neurons with the largest GRADIEND score
    (k = their number), against the chance expectation k²/N."""
    union = sorted({n for units in neurons.values() for n in units})
    k, total = len(union), scores.numel()
    if k == 0:
        return {"k": 0, "n_neurons": total, "overlap": 0, "fraction": None, "chance_fraction": None, "top": []}
    flat = torch.topk(scores.flatten(), k).indices
    width = scores.shape[1]
    top = [(layers[int(i) // width], int(i) % width) for i in flat]
    hits = len(set(top) & set(union))
    return {"k": k, "n_neurons": total, "overlap": hits, "fraction": hits / k, "chance_fraction": k / total,
            "top": [list(t) for t in top]}
