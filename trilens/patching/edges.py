"""Edge attribution (EAP, Syed et al. 2023; EAP-IG, Hanna et al. 2024): a score for every edge of the residual graph.

For an edge u -> v (u's output is part of v's input), score = (out_u,clean − out_u,corrupted) · ∂m/∂(input of v), the
change in the metric, to first order, when that one edge carries the clean value into the corrupted run. ``"eap"``
takes the gradient at the corrupted run (so the edges into v sum to v's attribution patching score); ``"eap-ig"``
averages it over ``steps`` points α = 1/steps, ..., 1 on the straight line from the corrupted to the clean input
embeddings (the points run batched, ``batch_size`` runs per forward pass).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..capture.grad_hooks import embedding_modules, frozen_weights, input_embeddings, keep_hook
from ..capture.grad_scale import grad as scaled_grad
from ..devices import with_weights_onloaded
from ..errors import InputError
from ..provenance import provenance
from .cells import pair_batches
from .circuit import CircuitResult
from .faithfulness import circuit_sizes, faithfulness_runs
from .graph import Graph, build_graph, check_graph
from .metrics import ResolvedMetric, as_metric, describe, resolve
from .result import stack_tokens

if TYPE_CHECKING:
    from ..inputs import Batch
    from ..model import Model

METHODS = ("eap", "eap-ig")


@with_weights_onloaded
def edge_attribution(
    model: Model,
    clean: Any,
    corrupted: Any,
    metric: Any = None,
    *,
    method: str = "eap-ig",
    steps: int = 5,
    step: int | None = None,
    faithfulness: bool | Sequence[int] = True,
    batch_size: int = 16,
    progress: bool = True,
) -> CircuitResult:
    """Scores of every edge of the residual graph (see ``graph``), and how much of the metric circuits of the top
    edges recover.

    Args:
        clean: inputs (texts, ids, or (source, target) pairs).
        corrupted: inputs paired row by row with ``clean``, of equal token lengths.
        metric: as ``patching_sweep``'s (default: the clean prediction's logit minus the corrupted prediction's).
        method: ``"eap"`` (gradient at the corrupted run) or ``"eap-ig"`` (averaged over ``steps`` points).
        faithfulness: True measures circuits of a geometric series of sizes (every size run exactly, with every
            other edge given its corrupted value); a list of sizes measures those; False none.
        batch_size: runs per forward pass (gradient points, or circuits x pairs for faithfulness).
    """
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, not {method!r}.")
    if steps < 1 or batch_size < 1:
        raise InputError(f"steps and batch_size must be at least 1, not {steps} and {batch_size}.")
    setup = _setup(model, clean, corrupted, metric, step)
    graph, cb, kb, bound = setup.graph, setup.clean, setup.corrupted, setup.bound
    m_clean, m_corrupted = setup.m_clean, setup.m_corrupted
    alphas = [0.0] if method == "eap" else [k / steps for k in range(1, steps + 1)]
    grads = receiver_gradients(model, graph, cb, kb, bound, alphas, batch_size, progress)
    scores = edge_scores(graph, setup.clean_acts, setup.corrupted_acts, grads, kb.masks)
    result = CircuitResult(
        senders=graph.senders, receivers=[r.name for r in graph.receivers],
        feeds={r.name: list(r.feeds) for r in graph.receivers}, adjacency=graph.adjacency(), scores=scores,
        m_clean=m_clean, m_corrupted=m_corrupted, method=method, tokens=stack_tokens(model, cb),
        info=provenance(model, "edge_attribution", {"method": method, "steps": len(alphas), "step": step,
                                                    **describe(setup.spec)}, int(m_clean.shape[0]),
                        gradient_points=len(alphas)))
    if faithfulness is not False:
        sizes = circuit_sizes(result.n_edges) if faithfulness is True else sorted({int(n) for n in faithfulness})
        values = faithfulness_runs(model, graph, cb, setup.corrupted_acts, bound,
                                   [result.circuit_mask(n) for n in sizes], batch_size, progress)
        result.set_faithfulness(sizes, values)
    return result


@dataclass
class _Setup:
    spec: Any
    graph: Graph
    clean: Batch
    corrupted: Batch
    clean_acts: dict[str, torch.Tensor]
    corrupted_acts: dict[str, torch.Tensor]
    bound: ResolvedMetric
    m_clean: torch.Tensor
    m_corrupted: torch.Tensor


def _setup(model: Model, clean: Any, corrupted: Any, metric: Any, step: int | None) -> _Setup:
    """Pair the inputs, trace both runs at the graph's sites, check the graph on the model and bind the metric."""
    spec = as_metric(metric)
    cb, kb, aligned = pair_batches(model, clean, corrupted)
    for stack, ok in aligned.items():
        if not ok:
            raise InputError(f"edge attribution compares the two runs position by position, and the clean and "
                             f"corrupted {stack} inputs of some pair differ in token length: write the corrupted input "
                             "with as many tokens as the clean one.")
    # the residual stream as a sum of every sender before (pre-norm), or with a node per norm (post-norm): one trace
    # holds what both layouts read, and the first whose sums hold on the model is kept (in float16/bfloat16, whose
    # sums hold only to rounding, the one whose sums hold most closely)
    layouts = [build_graph(model, post_norm) for post_norm in (False, True)]
    sites = [s for s in dict.fromkeys(s for g in layouts for s in g.sites) if s in model.site_index]
    corrupted_run = model.trace(corrupted, sites=sites)
    checked, refusal = [], None
    for layout in layouts:
        try:
            checked.append(check_graph(model, layout, corrupted_run))
        except InputError as err:
            refusal = err
        if checked and model.dtype.itemsize >= 4:
            break
    if not checked:
        raise refusal
    graph = min(checked, key=lambda found: found[1])[0]
    clean_run = model.trace(clean, sites=graph.sites)
    cb, kb = cb.to(model.device), kb.to(model.device)
    bound = resolve(model, kb, spec, clean_run.logits, corrupted_run.logits, step)
    return _Setup(spec, graph, cb, kb, {s: clean_run[s] for s in graph.sites},
                  {s: corrupted_run[s] for s in graph.sites}, bound,
                  bound.of_run(clean_run.logits, cb).detach().cpu(), bound.of_run(corrupted_run.logits, kb).detach().cpu())


@with_weights_onloaded
def circuit_faithfulness(model: Model, clean: Any, corrupted: Any, circuits: Sequence[Any], metric: Any = None, *,
                         step: int | None = None, batch_size: int = 16, progress: bool = True) -> torch.Tensor:
    """``[pair, circuit]`` normalised faithfulness, (m_circuit − m_corrupted) / (m_clean − m_corrupted), of each
    circuit: a ``CircuitResult.circuit_mask(n)`` (``[sender, receiver]`` bool over the model's graph), or a list of
    (sender, receiver) names."""
    setup = _setup(model, clean, corrupted, metric, step)
    graph = setup.graph
    masks = [_as_mask(graph, c) for c in circuits]
    values = faithfulness_runs(model, graph, setup.clean, setup.corrupted_acts, setup.bound, masks, batch_size, progress)
    gap = (setup.m_clean - setup.m_corrupted).double()[:, None]
    return (values - setup.m_corrupted.double()[:, None]) / torch.where(gap.abs() > 1e-12, gap, float("nan"))


def _as_mask(graph: Graph, circuit: Any) -> torch.Tensor:
    adj = graph.adjacency()
    if isinstance(circuit, torch.Tensor):
        if circuit.shape != adj.shape:
            raise InputError(f"a circuit mask is [sender, receiver] {tuple(adj.shape)} for this model, not "
                             f"{tuple(circuit.shape)}.")
        return circuit.bool() & adj
    s_index = {n: i for i, n in enumerate(graph.senders)}
    r_index = {r.name: i for i, r in enumerate(graph.receivers)}
    mask = torch.zeros_like(adj)
    for edge in circuit:
        u, v = (edge["sender"], edge["receiver"]) if isinstance(edge, dict) else edge
        if u not in s_index or v not in r_index or not adj[s_index[u], r_index[v]]:
            raise InputError(f"{u} -> {v} is not an edge of this model's graph (senders such as {graph.senders[1]}, "
                             f"receivers such as {graph.receivers[0].name}).")
        mask[s_index[u], r_index[v]] = True
    return mask


def receiver_gradients(model: Model, graph: Graph, clean: Batch, corrupted: Batch, bound: ResolvedMetric,
                       alphas: Sequence[float], batch_size: int, progress: bool) -> dict[str, torch.Tensor]:
    """``{site: mean over alphas of d metric / d input}`` ``[pair, position, d_model]`` at every receiver site, the
    input embeddings at ``corrupted + alpha (clean - corrupted)``."""
    from tqdm.auto import tqdm

    sites = list(dict.fromkeys(s for r in graph.receivers for s in r.sites))
    modules = embedding_modules(model)
    with torch.no_grad():
        emb = {stack: (modules[stack](corrupted.ids[stack]), modules[stack](clean.ids[stack])) for stack in modules}
    n_pairs = corrupted.input_ids.shape[0]
    jobs = [(pair, a) for a in alphas for pair in range(n_pairs)]
    total: dict[str, torch.Tensor] = {}
    bar = tqdm(total=len(jobs), desc="edge gradients", unit="run", disable=not progress, leave=False)
    try:
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start:start + batch_size]
            pairs = torch.tensor([p for p, _ in chunk], device=corrupted.input_ids.device)
            alpha = torch.tensor([a for _, a in chunk], device=corrupted.input_ids.device)
            sub = corrupted.rows(pairs)
            values = {}
            for stack, (k, c) in emb.items():
                w = alpha.to(k.dtype).view(-1, 1, 1)
                values[stack] = k[pairs] + w * (c[pairs] - k[pairs])
            store: dict[str, torch.Tensor] = {}
            # each receiver gets its own copy: its gradient is the metric's through that receiver alone
            hooks = [(s, keep_hook(store, s, own_copy=True)) for s in sites]
            with frozen_weights(model.hf_model), torch.enable_grad(), input_embeddings(model, values), \
                    model.hooks(hooks):
                logits = model.hf_model(**sub.forward_kwargs()).logits
                value = bound.of_run(logits, sub, pairs)
            got = scaled_grad(value.sum(), [store[s] for s in sites], allow_unused=True)
            for s, g in zip(sites, got):
                g = torch.zeros_like(store[s]) if g is None else g
                acc = total.setdefault(s, torch.zeros(n_pairs, *g.shape[1:], dtype=torch.float64, device=g.device))
                acc.index_add_(0, pairs, g.detach().double())
            bar.update(len(chunk))
    finally:
        bar.close()
    return {s: t / len(alphas) for s, t in total.items()}


def edge_scores(graph: Graph, clean: dict[str, torch.Tensor], corrupted: dict[str, torch.Tensor],
                grads: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[pair, sender, receiver]``: (out_u,clean − out_u,corrupted) · gradient at v, summed over positions (NaN where
    there is no edge); one product per sender group with every receiver it feeds."""
    n_pairs = next(iter(grads.values())).shape[0]
    out = torch.full((n_pairs, len(graph.senders), len(graph.receivers)), float("nan"), dtype=torch.float64)
    receiver_grads = [sum(grads[s] for s in rec.sites) for rec in graph.receivers]  # [pair, position, d_model]
    for gi, g in enumerate(graph.groups):
        fed = [r for r, rec in enumerate(graph.receivers) if gi in rec.groups]
        if not fed:
            continue
        diff = graph.outputs(g, clean[g.site].double()) - graph.outputs(g, corrupted[g.site].double())
        diff = diff * masks["encoder" if g.kind == "encoder" else g.stack].to(diff.device, diff.dtype)[:, None, :, None]
        grad = torch.stack([receiver_grads[r].to(diff.device) for r in fed])  # [receiver, pair, position, d_model]
        out[:, g.first:g.first + len(g.names), fed] = torch.einsum("bnpd,rbpd->bnr", diff, grad).cpu()
    return out
