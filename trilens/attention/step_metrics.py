"""Per-step attention metrics from attention patterns: one batched tensor expression per metric, no loops over steps.

Self-attention (``self_step_metrics``): at the row that predicts each step, the mass on the source (raw, and with the
first token left out and the rest renormalised, since first tokens act as attention sinks), the mass on the first token
(the sink), the entropy and the mass on the previous token. Cross-attention (``cross_step_metrics``): the entropy, the
sink, the spread (exp(entropy) / N: the fraction of the source one step spreads over, 1 for uniform attention) and
the coverage after the step (Tu et al. 2016: mean over source tokens of min(1, attention received so far))."""

from __future__ import annotations

import torch

SELF_METRICS = ("source_mass", "source_mass_no_sink", "sink", "entropy", "previous")
CROSS_METRICS = ("entropy", "sink", "spread", "coverage")


def _entropy(rows: torch.Tensor) -> torch.Tensor:
    return -(rows * rows.clamp_min(torch.finfo(rows.dtype).tiny).log()).sum(-1)


def _rows_at(patterns: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``patterns [L, B, H, Q, K]`` -> the query rows at ``positions [B, T]``: ``[L, B, H, T, K]``."""
    L, B, H, _, K = patterns.shape
    index = positions[None, :, None, :, None].expand(L, B, H, -1, K).to(patterns.device)
    return patterns.gather(3, index)


def _blank(values: dict[str, torch.Tensor], valid: torch.Tensor) -> dict[str, torch.Tensor]:
    keep = valid[None, :, None, :].to(next(iter(values.values())).device)
    return {k: v.float().masked_fill(~keep, float("nan")) for k, v in values.items()}


def self_step_metrics(patterns: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor,
                      source_lengths: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """``{metric: [L, B, H, T]}`` for self-attention ``patterns [L, B, H, Q, K]`` at the rows ``positions [B, T]``;
    the source is keys ``0 .. N_b - 1`` (no source metrics without ``source_lengths``). NaN where a step is not valid,
    and the previous-token mass at position 0."""
    rows = _rows_at(patterns, positions)
    keys = torch.arange(rows.shape[-1], device=rows.device)
    sink = rows[..., 0]
    prev_index = (positions - 1).clamp_min(0).to(rows.device)[None, :, None, :, None].expand(*rows.shape[:-1], 1)
    previous = rows.gather(-1, prev_index)[..., 0]
    previous = previous.masked_fill((positions == 0).to(rows.device)[None, :, None, :], float("nan"))
    out = {"sink": sink, "entropy": _entropy(rows), "previous": previous}
    if source_lengths is not None:
        source = (keys[None, :] < source_lengths.to(rows.device)[:, None])[None, :, None, None, :]  # [1, B, 1, 1, K]
        mass = (rows * source).sum(-1)
        out["source_mass"] = mass
        # without the first token, renormalised over the rest; a one-token source leaves nothing: 0
        out["source_mass_no_sink"] = (mass - sink) / (1 - sink).clamp_min(torch.finfo(rows.dtype).tiny)
    return _blank(out, valid)


def cross_step_metrics(patterns: torch.Tensor, valid: torch.Tensor, source_lengths: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{metric: [L, B, H, T]}`` for cross-attention ``patterns [L, B, H, T, N]`` (query t = the row predicting step
    t + 1), over sources of ``source_lengths [B]`` tokens."""
    rows = patterns[..., : valid.shape[1], :]
    n = source_lengths.to(rows.device).float()[None, :, None, None]
    entropy = _entropy(rows)
    received = (rows * valid.to(rows.device)[None, :, None, :, None]).cumsum(3)  # attention each source token got so far
    source = (torch.arange(rows.shape[-1], device=rows.device)[None, :] < source_lengths.to(rows.device)[:, None])
    coverage = (received.clamp_max(1) * source[None, :, None, None, :]).sum(-1) / n
    return _blank({"entropy": entropy, "sink": rows[..., 0], "spread": entropy.exp() / n, "coverage": coverage}, valid)


def uniform_source_mass(source_lengths: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``[B, T]``: the source mass of uniform causal attention, N / (N + t - 1) at step t (1-based): row p = N + t - 2
    sees N + t - 1 tokens, N of them the source. NaN where a step is not valid."""
    n = source_lengths.float()[:, None]
    t = torch.arange(1, valid.shape[1] + 1, dtype=torch.float)[None, :]
    return (n / (n + t - 1)).masked_fill(~valid, float("nan"))
