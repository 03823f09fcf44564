"""The perturbation check for source maps (Chefer et al. 2021): remove growing fractions of the source tokens, most
relevant first (positive: the target's probability should fall fast, a lower area is better), least relevant first
(negative: a higher area is better) or in random order, and read each step's target probability, teacher-forced."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from ..capture.steps_input import StepInputs
from ..errors import InputError

if TYPE_CHECKING:
    from ..model import Model

FRACTIONS = (0.0, 0.25, 0.5, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)
ORDERS = ("positive", "negative", "random")


def replacement_id(model: Model) -> int:
    """The token that stands in for a removed one: the mask token where the tokenizer has one, else padding."""
    mask = getattr(model.tokenizer, "mask_token_id", None) if model.tokenizer is not None else None
    return int(mask) if mask is not None else model.pad_token_id


def _order(scores: torch.Tensor, order: str, generator: torch.Generator) -> torch.Tensor:
    if order == "positive":
        return scores.argsort(descending=True, stable=True)
    if order == "negative":
        return scores.argsort(stable=True)
    return torch.randperm(len(scores), generator=generator)


def perturbation_curve(model: Model, steps: StepInputs, source_maps: torch.Tensor, *, order: str = "positive",
                       fractions: tuple[float, ...] = FRACTIONS, seed: int = 0, batch_size: int = 256,
                       progress: bool = False) -> torch.Tensor:
    """``[len(fractions)]``: the mean probability of each step's token, over every valid (input, step), with the
    given fraction of its source removed in ``order`` of ``source_maps [B, T, N]`` (that step's map)."""
    if order not in ORDERS:
        raise InputError(f"order must be one of {', '.join(ORDERS)}, not {order!r}.")
    if source_maps.shape[:2] != steps.valid.shape:
        raise InputError(f"maps for {tuple(source_maps.shape[:2])} (inputs, steps) do not fit these {tuple(steps.valid.shape)}.")
    generator = torch.Generator().manual_seed(seed)
    fill = replacement_id(model)
    jobs = []  # (row, step, fraction index)
    rows = []
    for b, t in steps.valid.nonzero().tolist():
        n = int(steps.source_lengths[b])
        ranked = _order(source_maps[b, t, :n], order, generator)
        for f, fraction in enumerate(fractions):
            row = steps.rows[b]
            src = list(row[0] if isinstance(row, tuple) else row[:n])
            for j in ranked[: round(fraction * n)].tolist():
                src[j] = fill
            rows.append((src, row[1]) if isinstance(row, tuple) else src + list(row[n:]))
            jobs.append((b, t, f))
    b, t, f_index = torch.tensor(jobs).T
    positions, tokens = steps.positions[b, t], steps.step_ids[b, t]
    probs = torch.zeros(len(jobs))
    for start in tqdm(range(0, len(rows), batch_size), desc="perturbation", disable=not progress, unit="batch"):
        chunk = slice(start, start + batch_size)
        with torch.inference_mode():
            logits = model.run(rows[chunk]).float()
        at = logits[torch.arange(logits.shape[0]), positions[chunk].to(logits.device)].log_softmax(-1)
        probs[chunk] = at.gather(1, tokens[chunk, None].to(at.device))[:, 0].exp().cpu()
    return torch.stack([probs[f_index == f].mean() for f in range(len(fractions))])


def area(curve: torch.Tensor, fractions: tuple[float, ...] = FRACTIONS) -> float:
    """Area under a perturbation curve over the removed fraction (trapezoids)."""
    return float(torch.trapezoid(curve, torch.tensor(fractions, dtype=curve.dtype)))
