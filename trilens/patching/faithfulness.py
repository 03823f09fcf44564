"""Faithfulness of a circuit: the clean run with every edge outside the circuit given its corrupted value.

At each receiver v, the input becomes input_v − Σ_{u -> v not in the circuit} (out_u − out_u,corrupted), where out_u is
u's output in this same run (so what flows along a kept edge is computed from the circuit upstream). With every edge
kept the run is the clean one; with none, every receiver reads the corrupted outputs and the run is the corrupted one.
Circuits run batched: each row of a forward pass is one (circuit, pair).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from .graph import Graph

if TYPE_CHECKING:
    from ..inputs import Batch
    from ..model import Model
    from .metrics import ResolvedMetric


def circuit_sizes(n_edges: int, points: int = 16) -> list[int]:
    """0, then a geometric series of edge counts up to ``n_edges`` (every edge)."""
    if n_edges <= points:
        return list(range(n_edges + 1))
    grid = torch.logspace(0, float(torch.log10(torch.tensor(float(n_edges)))), points - 1).round().long().tolist()
    return sorted({0, *grid, n_edges})


def faithfulness_runs(model: Model, graph: Graph, clean: Batch, corrupted: dict[str, torch.Tensor],
                      bound: ResolvedMetric, circuits: Sequence[torch.Tensor], batch_size: int,
                      progress: bool) -> torch.Tensor:
    """``[pair, circuit]``: the metric of the clean run of each pair with only each circuit's edges (``[sender,
    receiver]`` bool masks) carrying their clean values."""
    from tqdm.auto import tqdm

    n_pairs = clean.input_ids.shape[0]
    jobs = [(c, p) for c in range(len(circuits)) for p in range(n_pairs)]
    masks = torch.stack([torch.as_tensor(c, dtype=torch.bool) for c in circuits])  # [circuit, sender, receiver]
    out = torch.empty(n_pairs, len(circuits), dtype=torch.float64)
    bar = tqdm(total=len(jobs), desc="circuits", unit="run", disable=not progress, leave=False)
    try:
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start:start + batch_size]
            circ = torch.tensor([c for c, _ in chunk])
            pairs = torch.tensor([p for _, p in chunk])
            sub = clean.rows(pairs.to(clean.input_ids.device))
            hooks = _hooks(graph, masks[circ], pairs, corrupted)
            with torch.no_grad(), model.hooks(hooks):
                logits = model.hf_model(**sub.forward_kwargs()).logits
                values = bound.of_run(logits, sub, pairs).double().cpu()
            out[pairs, circ] = values
            bar.update(len(chunk))
    finally:
        bar.close()
    return out


def _hooks(graph: Graph, masks: torch.Tensor, pairs: torch.Tensor, corrupted: dict[str, torch.Tensor]) -> list:
    """Hooks that keep each sender's output of this run and patch each receiver's input (rows: ``masks[i]`` for
    pair ``pairs[i]``)."""
    current: dict[str, torch.Tensor] = {}
    hooks: list[tuple[str, Any]] = []

    def keep(site: str):
        def hook(x: torch.Tensor, hook: Any = None) -> torch.Tensor:
            current[site] = x
            return x
        return hook

    for g in graph.groups:
        if g.kind != "encoder":  # the encoder output is patched where it is read (cross-attention's keys, values)
            hooks.append((g.site, keep(g.site)))
    for r, rec in enumerate(graph.receivers):
        dropped = ~masks[:, :, r]  # [row, sender]: edges into r given their corrupted value
        if not bool(dropped[:, [i for g in rec.groups for i in graph.groups[g].indices]].any()):
            continue
        for site in rec.sites:
            hooks.append((site, _patch(graph, rec.groups, dropped, pairs, corrupted, current, rec.kind == "cross_kv")))
    return hooks


def _patch(graph: Graph, groups: Sequence[int], dropped: torch.Tensor, pairs: torch.Tensor,
           corrupted: dict[str, torch.Tensor], current: dict[str, torch.Tensor], reads_encoder: bool):
    def hook(x: torch.Tensor, hook: Any = None) -> torch.Tensor:
        delta = torch.zeros_like(x)
        for gi in groups:
            g = graph.groups[gi]
            drop = dropped[:, list(g.indices)].to(x.device, x.dtype)  # [row, sender]
            if not bool(drop.any()):
                continue
            base = corrupted[g.site][pairs.to(corrupted[g.site].device)].to(x.device, x.dtype)
            now = x if reads_encoder else current[g.site]
            diff = now - base
            if g.w_out is None:
                delta = delta + drop.view(-1, 1, 1) * diff
            else:  # heads: [row, position, head, d_head] x W_O, the dropped heads only
                delta = delta + torch.einsum("bphe,bh,hed->bpd", diff, drop, g.w_out.to(x.device, x.dtype))
        return x - delta

    return hook
