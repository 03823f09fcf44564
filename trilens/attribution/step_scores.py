"""Scores per step beside the attributions: probability, log-probability, entropy, cross-entropy, rank, and the
contrastive probability difference; read from one plain forward pass per batch of inputs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from ..capture.grad_hooks import head_rows
from ..capture.objectives import ScoredRows

if TYPE_CHECKING:
    from ..inputs import Batch
    from ..model import Model


def step_scores(model: Model, batch: Batch, rows: ScoredRows, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """``{name: [input, step]}`` for ``batch`` at ``rows`` from one plain forward pass (0 where a step does not
    exist)."""
    if not names:
        return {}
    with torch.inference_mode(), head_rows(model, rows.positions):
        logits = model.hf_model(**batch.forward_kwargs()).logits.float().cpu()
    return {name: value.masked_fill(~rows.valid, 0.0) for name, value in _scores(logits, rows, names).items()}


def _scores(logits: torch.Tensor, rows: ScoredRows, names: Sequence[str]) -> dict[str, torch.Tensor]:
    logp = logits.log_softmax(-1)
    token = logp.gather(-1, rows.tokens[..., None])[..., 0]
    found = {}
    for name in names:
        if name == "probability":
            found[name] = token.exp()
        elif name == "logprob":
            found[name] = token
        elif name == "cross_entropy":
            found[name] = -token
        elif name == "entropy":
            found[name] = -(logp.exp() * logp).sum(-1)
        elif name == "rank":
            found[name] = (logits > logits.gather(-1, rows.tokens[..., None])).sum(-1).float()
        elif name == "contrast_prob_diff":
            found[name] = token.exp() - logp.gather(-1, rows.foils[..., None])[..., 0].exp()
    return found
