"""Attribution patching: every cell of a sweep estimated at once from one forward and backward pass of the patched run.

AtP (Nanda 2023; Kramár et al. 2024): the change a cell makes ≈ (a_source − a_base) · ∂m/∂a at the base run. AtP*
(Kramár et al. 2024) adds two fixes. The QK fix: a query or key cell's effect is not linearised through the softmax;
its attention pattern is recomputed exactly (one key, or one query row, changed) and only the step from the pattern
to the metric is linear, with ∂m/∂A = ∂m/∂z · vᵀ read from the head's output ``z``. GradDrop: the backward pass is
repeated once per layer with the gradient through that layer's residual contributions dropped; the mean of the
estimates' absolute values over those passes (``result.magnitudes``) catches cells whose paths cancel in the plain
gradient. GradDrop needs a residual stream that is a sum of the layers' contributions: on post-norm models (BERT,
BART) it is not run, and the result's parameters say so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError
from .cells import Panel
from .gradients import metric_gradients
from .result import PatchingResult
from .setup import Prepared, prepare

if TYPE_CHECKING:
    from ..model import Model

logger = logging.getLogger(__name__)

METHODS = ("atp", "atp*")
QK_KINDS = {"q": "", "k": "", "cross_q": "cross_", "cross_k": "cross_"}
# A layer's contributions to the residual stream, whose gradient GradDrop drops in turn.
CONTRIBUTIONS = ("attn_out", "cross_attn_out", "mlp_out")
GRADDROP_SKIPPED = ("GradDrop not run: this model normalises its residual stream after every sublayer (post-norm), so "
                    "no layer's contribution can be dropped alone; magnitudes are None")
QK_FIT_TOLERANCE = 1e-2  # relative residual of attention scores against s * q.k above which the QK fix is refused


def attribution_patching(
    model: Model,
    clean: Any,
    corrupted: Any,
    metric: Any = None,
    *,
    method: str = "atp",
    sites: str | Sequence[str] | None = None,
    heads: bool | str | Sequence[str] = False,
    positions: str = "each",
    direction: str = "denoise",
    step: int | None = None,
    stacks: str | Sequence[str] | None = None,
) -> PatchingResult:
    """Every cell of ``patching_sweep`` (same arguments, same result shape) estimated to first order: one forward pass
    of each run and one backward pass of the patched run (``"atp*"``: one more backward pass per layer, and the QK fix
    for ``q`` / ``k`` cells)."""
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, not {method!r}.")
    star = method == "atp*"
    prep = prepare(model, clean, corrupted, metric, sites=sites, heads=heads, positions=positions, direction=direction,
                   step=step, stacks=stacks,
                   extra_sites=(lambda ps: _qk_sites(model, ps) + _sum_sites(model)) if star else None)
    sites_needed = list(dict.fromkeys(prep.sites + (_qk_sites(model, prep.panels) if star else [])))
    graddrop = star and _residual_is_a_sum(model, prep)
    stops = [()] + (_graddrop_stops(model) if graddrop else [])
    grads = metric_gradients(model, prep.base_batch, prep.bound, sites_needed, stops)
    scales: dict[tuple[str, int], float] = {}
    values = {p.key: _estimate(model, prep, p, grads[0], star, scales) for p in prep.panels}
    magnitudes = None
    if star and len(stops) > 1:
        dropped = [{p.key: _estimate(model, prep, p, g, star, scales) for p in prep.panels} for g in grads[1:]]
        magnitudes = {k: sum(d[k].abs() for d in dropped) / max(len(dropped) - 1, 1) for k in values}
    base = prep.m_base.cpu()
    out = {k: v + base.view(-1, *[1] * (v.dim() - 1)) for k, v in values.items()}
    params = {"positions": positions, "step": step}
    if star and not graddrop:
        params["graddrop"] = GRADDROP_SKIPPED
        logger.info("AtP*: %s", GRADDROP_SKIPPED)
    return prep.result(model, out, method, params, magnitudes=magnitudes, backward_passes=len(stops))


def _estimate(model: Model, prep: Prepared, panel: Panel, grads: dict[str, torch.Tensor], star: bool,
              scales: dict[tuple[str, int], float]) -> torch.Tensor:
    """``[pair, layer, position(, head)]`` first-order changes of the metric (NaN where no cell exists)."""
    per_layer = []
    for layer, site in enumerate(panel.sites):
        if star and panel.kind in QK_KINDS:
            per_layer.append(_qk_fixed(model, prep, panel, layer, grads, scales))
        else:
            diff = (prep.source[site] - prep.base[site]).double()
            per_layer.append(panel.reduce(diff * grads[site].double()).cpu())
    t = torch.stack(per_layer, 1)
    if panel.per_position:
        mask = prep.base_batch.masks[panel.position_stack].cpu().bool()[:, None, :]
        mask = mask[..., None] if panel.n_heads is not None else mask
        t = t.masked_fill(~mask.expand_as(t), float("nan"))
    return t


def _attention_sites(model: Model, panel: Panel, layer: int) -> dict[str, str]:
    prefix = QK_KINDS[panel.kind]
    names = {k: model.site(prefix + k, layer, panel.stack) for k in ("q", "k", "v", "z")}
    names["pattern"] = model.site(f"{prefix}attn_pattern", layer, panel.stack)
    return names


def _qk_sites(model: Model, panel_list: list[Panel]) -> list[str]:
    """The sites the QK fix reads besides the panels' own: each query/key layer's q, k, v, z and pattern."""
    return [s for p in panel_list if p.kind in QK_KINDS for layer in range(len(p.sites))
            for s in _attention_sites(model, p, layer).values()]


def _sum_sites(model: Model) -> list[str]:
    """The first layer's residual stream before and after, and its contributions: whether it is their sum."""
    stack = model.stacks[0]
    return [model.site("resid_pre", 0, stack), model.site("resid_post", 0, stack)] + _graddrop_stops(model)[0]


def _residual_is_a_sum(model: Model, prep: Prepared) -> bool:
    """Whether the residual stream after a layer is the one before plus the layer's contributions (pre-norm blocks).
    Post-norm blocks (BERT, BART) normalise the sum, and their attention-output hook is that normalised stream
    itself: dropping its gradient would cut every path."""
    names = _sum_sites(model)
    before, after, parts = prep.base[names[0]].double(), prep.base[names[1]].double(), names[2:]
    gap = after - before - sum(prep.base[n].double() for n in parts)
    return float(gap.abs().max()) <= 1e-4 * max(float(after.abs().max()), 1.0)


def _graddrop_stops(model: Model) -> list[list[str]]:
    """One list per layer (of each stack): that layer's residual contributions."""
    return [model.sites(stack=stack, layer=layer, kind=[k for k in CONTRIBUTIONS if k in model.site_index.kinds])
            for stack in model.stacks for layer in range(model.n_layers[stack])]


def _heads_like(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``[pair, position, kv_head, d]`` repeated to ``n_heads`` query heads (grouped-query attention)."""
    return t if t.shape[2] == n_heads else t.repeat_interleave(n_heads // t.shape[2], dim=2)


def _qk_fixed(model: Model, prep: Prepared, panel: Panel, layer: int, grads: dict[str, torch.Tensor],
              scales: dict[tuple[str, int], float]) -> torch.Tensor:
    """A query or key cell's change of the metric with its attention pattern recomputed exactly: ``[pair, position,
    head]`` (``[pair, head]`` for every position at once)."""
    names = _attention_sites(model, panel, layer)
    a = prep.base[names["pattern"]].double()  # [pair, head, query, key]
    n_heads = a.shape[1]
    qb, qs = (_heads_like(prep.base[names["q"]].double(), n_heads), _heads_like(prep.source[names["q"]].double(), n_heads))
    kb, ks = (_heads_like(prep.base[names["k"]].double(), n_heads), _heads_like(prep.source[names["k"]].double(), n_heads))
    v = _heads_like(prep.base[names["v"]].double(), n_heads)
    key = (names["pattern"], layer)
    if key not in scales:
        scales[key] = _score_scale(a, prep.source[names["pattern"]].double(), qb, qs, kb, ks, names["pattern"])
    s = scales[key]
    g = torch.einsum("pqhd,pkhd->phqk", grads[names["z"]].double(), v)  # d metric / d pattern
    log_a = a.clamp_min(1e-300).log().masked_fill(a <= 0, float("-inf"))
    is_query = panel.kind.endswith("q")
    if not panel.per_position:  # every query (key) of the head patched at once: the rows recomputed exactly
        delta = s * (torch.einsum("pqhd,pkhd->phqk", qs - qb, kb) if is_query else torch.einsum("pqhd,pkhd->phqk", qb, ks - kb))
        changed = torch.softmax(log_a + delta, -1).nan_to_num()
        return ((changed - a) * g).sum((-1, -2)).cpu()  # [pair, head]
    if is_query:  # one query row changed: recompute its softmax (rows whose query is unchanged stay exactly as they are)
        delta = s * torch.einsum("pqhd,pkhd->phqk", qs - qb, kb)
        changed = torch.where((delta != 0).any(-1, keepdim=True), torch.softmax(log_a + delta, -1).nan_to_num(), a)
        return ((changed - a) * g).sum(-1).transpose(1, 2).cpu()  # [pair, query, head]
    # One key j changed in every row q: with c = A[q, j] (exp(dS[q, j]) - 1), the new row is A / (1 + c) except at j,
    # so sum_j' (A' - A)[q, j'] G[q, j'] = c (G[q, j] - sum_j' A G) / (1 + c).
    delta = (s * torch.einsum("pqhd,pkhd->phqk", qb, ks - kb)).clamp_max(80.0)
    c = a * torch.expm1(delta)
    ag = (a * g).sum(-1, keepdim=True)
    per_key = (c * (g - ag) / (1 + c).clamp_min(1e-12)).sum(2)  # [pair, head, key]
    out = per_key.transpose(1, 2)  # [pair, key, head]
    if panel.n_heads != n_heads:  # keys of grouped-query attention: sum the query heads that share the key head
        out = out.reshape(*out.shape[:2], panel.n_heads, n_heads // panel.n_heads).sum(-1)
    return out.cpu()


def _score_scale(a_base: torch.Tensor, a_source: torch.Tensor, qb: torch.Tensor, qs: torch.Tensor, kb: torch.Tensor,
                 ks: torch.Tensor, site: str) -> float:
    """The constant s with scores = s * q.k + (what does not depend on q and k: masks, position biases), fitted on the
    difference of the two runs' log-patterns (row means removed, which softmax ignores); refused where scores are not
    of that form at the hooked q and k (e.g. rotary embeddings applied after them)."""
    valid = (a_base > 0) & (a_source > 0)
    if not bool(valid.any()):
        return 1.0
    y = a_source.clamp_min(1e-300).log() - a_base.clamp_min(1e-300).log()
    x = torch.einsum("pqhd,pkhd->phqk", qs, ks) - torch.einsum("pqhd,pkhd->phqk", qb, kb)
    alone = float((x * valid).pow(2).sum()) < 1e-20
    if alone:  # the runs' q and k agree here (their cells change nothing): fit the base run alone, as well as it goes
        y, x = a_base.clamp_min(1e-300).log(), torch.einsum("pqhd,pkhd->phqk", qb, kb)

    def centred(t: torch.Tensor) -> torch.Tensor:
        t = t.masked_fill(~valid, 0.0)
        return (t - t.sum(-1, keepdim=True) / valid.sum(-1, keepdim=True).clamp_min(1)).masked_fill(~valid, 0.0)

    xc, yc = centred(x), centred(y)
    denom = float(xc.pow(2).sum())
    if denom < 1e-20:
        return 1.0
    s = float((xc * yc).sum()) / denom
    residual = float((yc - s * xc).norm()) / max(float(yc.norm()), 1e-12)
    if not alone and residual > QK_FIT_TOLERANCE and float(yc.norm()) > 1e-6:
        raise InputError(f"AtP*'s QK fix needs attention scores that are a constant times q.k at the hooked q and k; at "
                         f"{site} they are not (relative residual {residual:.2g}: rotary position embeddings applied "
                         "after the q/k hooks, say). Use method='atp' for this model, or leave q and k out of heads=.")
    return s
