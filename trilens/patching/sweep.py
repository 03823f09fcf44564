"""``patching_sweep``: activation patching of every cell (site x layer x position, or x head), batched.

Denoising (default): run the corrupted input with one activation replaced by the clean run's; ``direction="noise"``
runs the clean input with the corrupted activation. Every batch row is the patched run of one pair with one cell
patched (``PatchRows``), so a sweep costs about cells / ``batch_size`` forward passes, and the LM head runs only at the
positions the metric reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..capture.grad_hooks import head_rows
from ..capture.interventions import PatchRows, RunState
from ..capture.replay import BlockReplay
from ..errors import InputError
from .cells import Cells, Panel, enumerate_cells
from .metrics import ResolvedMetric
from .result import PatchingResult
from .setup import prepare

if TYPE_CHECKING:
    from ..inputs import Batch
    from ..model import Model


def patching_sweep(
    model: Model,
    clean: Any,
    corrupted: Any,
    metric: Any = None,
    *,
    sites: str | Sequence[str] | None = None,
    heads: bool | str | Sequence[str] = False,
    positions: str = "each",
    direction: str = "denoise",
    step: int | None = None,
    stacks: str | Sequence[str] | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> PatchingResult:
    """The metric with each activation of the patched run replaced by the other run's, for every cell.

    Args:
        clean: inputs (texts, ids, or (source, target) pairs), or a data source with columns ``clean`` and
            ``corrupted`` (then ``corrupted=None``).
        corrupted: inputs paired row by row with ``clean``, of equal token length in each pair on the stacks whose
            sites are patched.
        metric: None / ``"logit_diff"`` (the clean prediction's logit minus the corrupted prediction's, at the last
            position, an encoder's mask or the last target token), ``TokenScore(token=, foil=, score=)``,
            ``StepScores()`` (every target step; ``step=`` picks one, else their mean), ``"kl"`` / ``KLDivergence``, or a
            function ``f(logits[, batch]) -> [batch]``.
        sites: whole-activation kinds (default ``resid_pre``, ``attn_out``, ``mlp_out``, and ``cross_attn_out`` on an
            encoder-decoder).
        heads: True patches each head's output ``z`` (and cross-attention's), or a list of per-head kinds among ``z``,
            ``q``, ``k``, ``v``, ``attn_pattern`` (a pattern cell is one head's attention row at one query position).
        positions: ``"each"`` (one cell per position) or ``"all"`` (a cell is the whole layer, or a head everywhere).
        direction: ``"denoise"`` (corrupted run, clean activation) or ``"noise"`` (clean run, corrupted activation).
        stacks: patch only these stacks' sites (an encoder-decoder's ``"decoder"``: its pairs then need equal targets
            only, the sources may differ in length).
        batch_size: patched runs per forward pass (memory grows with it).
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, not {batch_size}.")
    prep = prepare(model, clean, corrupted, metric, sites=sites, heads=heads, positions=positions, direction=direction,
                   step=step, stacks=stacks)
    cells = enumerate_cells(prep.panels, prep.base_batch.masks)
    replay = BlockReplay(model, prep.base_batch)
    starts = torch.tensor([replay.index(p.stack, 0) for p in prep.panels])[cells.panel] + cells.layer
    # chunks of one first-changed block (the blocks before it replay), then by position (a causal run starts there)
    order = torch.argsort(starts * (cells.position.max() + 2) + cells.position.clamp_min(0), stable=True)
    cells, starts = cells.take(order), starts[order]
    source = {n: prep.source[n] for n in prep.sites}
    flat = _run_cells(model, prep.base_batch, prep.bound, prep.panels, cells, starts, replay, source, batch_size,
                      progress)
    return prep.result(model, scatter(prep.panels, cells, flat, prep.base_batch.masks), "exact",
                       {"positions": positions, "step": step, "batch_size": batch_size}, cells=len(cells))


def _run_cells(model: Model, base_batch: Batch, bound: ResolvedMetric, panel_list: list[Panel], cells: Cells,
               starts: torch.Tensor, replay: BlockReplay, source: dict[str, torch.Tensor], batch_size: int,
               progress: bool) -> torch.Tensor:
    """``[cells]`` metric values: chunks of ``batch_size`` cells, each row of a forward pass one patched cell; the
    blocks before a chunk's first patched block replay the unpatched run's outputs."""
    from tqdm.auto import tqdm

    out = torch.empty(len(cells), dtype=torch.float64)
    bar = tqdm(total=len(cells), desc="patching", unit="cell", disable=not progress, leave=False)
    try:
        for start in range(0, len(cells), batch_size):
            chunk = cells.take(slice(start, start + batch_size))
            first = _first_position(replay, bound, chunk)
            sub = base_batch.rows(chunk.pair.to(base_batch.input_ids.device))
            with replay.resumed(sub, chunk.pair, int(starts[start:start + batch_size].min()), first) as kwargs:
                out[start:start + len(chunk)] = _run_chunk(model, sub, kwargs, first, bound, panel_list, chunk, source)
            bar.update(len(chunk))
    finally:
        bar.close()
    return out


def patch_interventions(panel_list: list[Panel], chunk: Cells, source: dict[str, torch.Tensor]) -> list[PatchRows]:
    """One ``PatchRows`` per site the chunk patches: row i of the forward pass gets cell i's ``source`` activation."""
    ivs = []
    rows = torch.arange(len(chunk))
    for pi, panel in enumerate(panel_list):
        at_panel = chunk.panel == pi
        if not bool(at_panel.any()):
            continue
        for layer in chunk.layer[at_panel].unique().tolist():
            sel = at_panel & (chunk.layer == layer)
            site = panel.sites[layer]
            pos = chunk.position[sel] if panel.per_position else None
            head = chunk.head[sel] if panel.n_heads is not None else None
            src = source[site]
            value = panel.read(src, chunk.pair[sel].to(src.device), None if pos is None else pos.to(src.device),
                               None if head is None else head.to(src.device))
            ivs.append(PatchRows(site, rows[sel], value, pos, head))
    return ivs


def _first_position(replay: BlockReplay, bound: ResolvedMetric, chunk: Cells) -> int:
    """Where a causal decoder-only run of the chunk can start: its earliest patched position and earliest scored
    position (0 where a cell spans every position, the metric reads all logits, or the model's cache cannot be cut)."""
    if not replay.can_start_late or not bound.reads_rows or bool((chunk.position < 0).any()):
        return 0
    scored = bound.rows_of(chunk.pair)
    scored_min = int(scored.positions[scored.valid].min()) if bool(scored.valid.any()) else 0
    return max(0, min(int(chunk.position.min()), scored_min))


def _run_chunk(model: Model, sub: Batch, kwargs: dict[str, Any], first: int, bound: ResolvedMetric,
               panel_list: list[Panel], chunk: Cells, source: dict[str, torch.Tensor]) -> torch.Tensor:
    """The metric of each row of ``sub`` (a chunk's pairs; the run from position ``first`` on, with ``kwargs``) with
    its cell patched."""
    pairs = chunk.pair
    state = RunState(masks=dict(sub.masks), offsets={"decoder": first})
    hooks = [h for iv in patch_interventions(panel_list, chunk, source) for h in iv.hooks(model, state)]
    with torch.no_grad(), model.hooks(hooks):
        if bound.reads_rows:
            with head_rows(model, bound.rows_of(pairs).positions.clamp_min(first) - first):
                logits = model.hf_model(**kwargs).logits
            return bound.evaluate(logits, pairs).cpu()
        logits = model.hf_model(**kwargs).logits
        return bound.evaluate(logits, pairs, sub).cpu()


def scatter(panel_list: list[Panel], cells: Cells, flat: torch.Tensor, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per panel, ``[pair, layer, position(, head)]`` values from the flat ones (NaN where no cell exists)."""
    n_pairs = next(iter(masks.values())).shape[0]
    widths = {s: m.shape[1] for s, m in masks.items()}
    out = {}
    for pi, panel in enumerate(panel_list):
        t = torch.full(panel.shape(n_pairs, widths), float("nan"), dtype=flat.dtype)
        sel = cells.panel == pi
        index = [cells.pair[sel], cells.layer[sel]]
        if panel.per_position:
            index.append(cells.position[sel])
        if panel.n_heads is not None:
            index.append(cells.head[sel])
        t[tuple(index)] = flat[sel]
        out[panel.key] = t
    return out
