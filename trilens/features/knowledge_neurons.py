"""Knowledge neurons (Dai et al. 2022), the activation-space baseline beside GRADIEND.

Attribution of FFN neuron i of layer l at the class slot: integrated gradients of P(factual token) on that layer's
FFN activation at the slot, from 0 to its value w̄, all neurons of the layer scaled together (captum's
``IntegratedGradients`` over a forward function that patches the activation; trilens supplies that function only).
Per prompt, neurons with attribution >= ``threshold`` x the prompt's largest are kept; a class's knowledge neurons are
those kept in >= ``share`` of its prompts. Interventions (suppress: zero, with ``AblateNeurons``; amplify: x2) measure
what the neurons do to P(factual) on held-out rows of each class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..capture.interventions import AblateNeurons, Hook
from ..capture.objectives import scored_stack
from ..errors import InputError
from ..inputs import Batch
from ..provenance import provenance
from .data import FeatureData, FeatureRow
from .gradients import SlotBatch, slot_batch, slot_logprobs
from .kn_result import KnowledgeNeurons

if TYPE_CHECKING:
    from ..model import Model
    from .gradiend import Gradiend


def _slot_activations(model: Model, sb: SlotBatch, sites: list[str]) -> dict[str, torch.Tensor]:
    """Each site's FFN activation at the slot ``[rows, d_ff]``, every layer from one forward pass."""
    seen: dict[str, torch.Tensor] = {}

    def grab(site: str):
        def hook(x: torch.Tensor, hook: Any = None) -> torch.Tensor:
            seen[site] = x[torch.arange(x.shape[0]), sb.positions.to(x.device)].detach().clone()
            return x

        return hook

    with torch.inference_mode(), model.hooks([(site, grab(site)) for site in sites]):
        slot_logprobs(model, sb)
    return seen


def _layer_attributions(model: Model, sb: SlotBatch, site: str, w_bar: torch.Tensor, n_steps: int,
                        internal_batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """IG attributions ``[rows, d_ff]`` of ``site``'s FFN neurons at the slot (from 0 to their value ``w_bar``), and
    captum's deltas ``[rows]``."""
    from captum.attr import IntegratedGradients

    def forward(act: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, dec: torch.Tensor, dec_mask: torch.Tensor,
                positions: torch.Tensor, factual: torch.Tensor) -> torch.Tensor:
        def patch(x: torch.Tensor, hook: Any = None) -> torch.Tensor:
            rows = torch.arange(x.shape[0], device=x.device)
            x = x.clone()
            x[rows, positions.to(x.device)] = act.to(x.dtype)
            return x

        batch = Batch(ids, mask, dec if dec.numel() else None, dec_mask if dec.numel() else None)
        part = SlotBatch(batch, positions, factual, factual)
        with model.hooks([(site, patch)]):
            logp = slot_logprobs(model, part)
        return logp.exp()[torch.arange(len(positions)), factual.to(logp.device)]

    b = sb.batch
    empty = torch.zeros(len(sb.positions), 0, dtype=torch.long)
    extra = (b.input_ids, b.attention_mask, b.decoder_input_ids if b.decoder_input_ids is not None else empty,
             b.decoder_attention_mask if b.decoder_attention_mask is not None else empty, sb.positions, sb.factual)
    with torch.enable_grad():
        attr, delta = IntegratedGradients(forward).attribute(
            w_bar, baselines=torch.zeros_like(w_bar), additional_forward_args=extra, n_steps=n_steps,
            internal_batch_size=internal_batch_size, return_convergence_delta=True)
    return attr.detach(), delta.detach()


def neuron_attributions(model: Model, rows: Sequence[FeatureRow], *, layers: Sequence[int] | None = None,
                        n_steps: int = 20, batch_size: int = 16, progress: bool = False
                        ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Knowledge-neuron attributions ``[rows, layers, d_ff]``, captum's deltas ``[rows, layers]`` and the layers."""
    from tqdm.auto import tqdm

    stack = scored_stack(model)
    layers = list(range(model.n_layers[stack])) if layers is None else list(layers)
    bad = [x for x in layers if not 0 <= x < model.n_layers[stack]]
    if bad:
        raise InputError(f"layer {bad[0]} does not exist in the {stack} ({model.n_layers[stack]} layers).")
    sb = slot_batch(model, rows)
    if bool((sb.factual < 0).any()):
        raise InputError("knowledge neurons need each row's factual token.")
    attrs, deltas = [], []
    chunks = [list(range(i, min(i + batch_size, len(rows)))) for i in range(0, len(rows), batch_size)]
    with tqdm(total=len(chunks) * len(layers), desc="knowledge neurons", disable=not progress) as bar:
        for idx in chunks:
            part = SlotBatch(sb.batch.rows(slice(idx[0], idx[-1] + 1)), sb.positions[idx], sb.factual[idx],
                             sb.counterfactual[idx])
            sites = [model.site("mlp_post", layer, stack) for layer in layers]
            w_bar = _slot_activations(model, part, sites)
            per_layer = []
            for site in sites:
                per_layer.append(_layer_attributions(model, part, site, w_bar[site], n_steps, batch_size * n_steps))
                bar.update(1)
            attrs.append(torch.stack([a for a, _ in per_layer], 1))
            deltas.append(torch.stack([d for _, d in per_layer], 1))
    return torch.cat(attrs), torch.cat(deltas), layers


def _amplify(layer: int, units: list[int], stack: str | None, model: Model, factor: float) -> Hook:
    idx = torch.tensor(units)

    def fn(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[..., idx.to(x.device)] *= factor
        return x

    return Hook(model.site("mlp_post", layer, stack), fn)


def _interventions(model: Model, neurons: list[tuple[int, int]], how: str) -> list[Any]:
    stack = scored_stack(model) if model.family == "encoder-decoder" else None
    by_layer: dict[int, list[int]] = {}
    for layer, unit in neurons:
        by_layer.setdefault(layer, []).append(unit)
    if how == "suppress":
        return [AblateNeurons(layer, units, stack=stack) for layer, units in by_layer.items()]
    return [_amplify(layer, units, stack, model, 2.0) for layer, units in by_layer.items()]


def intervention_effects(model: Model, data: FeatureData, neurons: dict[str, list[tuple[int, int]]],
                         n_texts: int = 64) -> list[dict[str, Any]]:
    """Mean P(factual) on each class's held-out rows, base and with each class's neurons suppressed / amplified."""
    out = []
    for evaluated in data.classes:
        sb = slot_batch(model, data.select("test", evaluated)[:n_texts])
        idx = torch.arange(len(sb.positions))

        def p(ivs: list[Any]) -> float:
            with torch.inference_mode():
                return float(slot_logprobs(model, sb, ivs).exp()[idx, sb.factual].mean())

        base = p([])
        for owner, units in neurons.items():
            for how in ("suppress", "amplify"):
                value = p(_interventions(model, units, how)) if units else base
                out.append({"neurons_of": owner, "intervention": how, "evaluated_on": evaluated, "p_base": base,
                            "p_after": value, "change": (value - base) / base if base > 0 else 0.0})
    return out


def knowledge_neurons(model: Model, data: FeatureData, *, n_prompts: int = 32, layers: Sequence[int] | None = None,
                      n_steps: int = 20, threshold: float = 0.2, share: float = 0.7, batch_size: int = 16,
                      gradiend: Gradiend | None = None, progress: bool = False) -> KnowledgeNeurons:
    """Each class's knowledge neurons from ``n_prompts`` of its training rows, their intervention effects on held-out
    rows and, given a ``gradiend``, their overlap with its largest decoder weights -> ``KnowledgeNeurons``."""
    if not 0 < threshold <= 1 or not 0 < share <= 1:
        raise InputError("threshold and share are fractions in (0, 1].")
    attributions, deltas, kept_share, neurons = {}, {}, {}, {}
    for c in data.classes:
        rows = data.select("train", c)[:n_prompts]
        attr, delta, layers_ = neuron_attributions(model, rows, layers=layers, n_steps=n_steps, batch_size=batch_size,
                                                   progress=progress)
        top = attr.flatten(1).max(1).values.clamp_min(1e-12)[:, None, None]
        kept = (attr >= threshold * top).float().mean(0)  # [layers, d_ff]: share of prompts keeping each neuron
        attributions[c], deltas[c], kept_share[c] = attr.mean(0), delta, kept
        neurons[c] = [(layers_[li], int(u)) for li, u in (kept >= share).nonzero().tolist()]
    effects = intervention_effects(model, data, neurons)
    overlap = None
    if gradiend is not None:
        from .neuron_map import decoder_neuron_scores, overlap_with

        overlap = overlap_with(decoder_neuron_scores(model, gradiend, layers_), neurons, layers_)
    params = {"n_prompts": n_prompts, "layers": layers_, "n_steps": n_steps, "threshold": threshold, "share": share}
    info = provenance(model, "knowledge_neurons", params, n_prompts * 2, classes=list(data.classes),
                      stack=scored_stack(model))
    return KnowledgeNeurons(classes=data.classes, layers=layers_, mean_attribution=attributions, deltas=deltas,
                            kept_share=kept_share, neurons=neurons, effects=effects, overlap=overlap, info=info)
