"""Attention rollout (Abnar & Zuidema 2020): how much of each input token reaches each position at the top of a stack,
by multiplying the layers' head-averaged attention, each mixed half-and-half with the residual (identity)."""

from __future__ import annotations

import torch

from ..errors import InputError


def residual_attention(patterns: torch.Tensor) -> torch.Tensor:
    """``[..., H, Q, K]`` -> ``[..., Q, K]``: Â = (mean_h A + I) / rowsum(mean_h A + I) (= 0.5 A + 0.5 I where rows
    of A sum to 1; a fully masked row keeps only the identity)."""
    mean = patterns.mean(-3)
    if mean.shape[-1] != mean.shape[-2]:
        raise InputError(f"rollout needs square self-attention patterns, not {tuple(mean.shape[-2:])}.")
    mixed = mean + torch.eye(mean.shape[-1], dtype=mean.dtype, device=mean.device)
    return mixed / mixed.sum(-1, keepdim=True)


def rollout(patterns: torch.Tensor, *, receptive_field: bool = False) -> torch.Tensor:
    """Rollout of one stack's self-attention ``patterns [L, ..., H, S, S]`` (layer first): R_1 = Â_1,
    R_l = Â_l R_(l-1); returns R_L ``[..., S, S]``, row i = how much of each input token reaches position i.

    ``receptive_field=True`` (causal stacks): each entry is divided by the same entry of the rollout of uniform causal
    attention, the share token j gets at position i from the causal structure alone (earlier tokens are visible to
    more positions, so they accumulate more), and rows are renormalised to sum to 1."""
    if patterns.dim() < 4:
        raise InputError(f"rollout takes patterns [layer, (batch,) head, query, key], not shape {tuple(patterns.shape)}.")
    mixed = residual_attention(patterns)
    out = mixed[0]
    for layer in mixed[1:]:
        out = layer @ out
    if receptive_field:
        s = patterns.shape[-1]
        causal = torch.ones(s, s, dtype=out.dtype, device=out.device).tril()
        uniform = rollout((causal / causal.sum(-1, keepdim=True)).expand(patterns.shape[0], 1, s, s))
        out = out / uniform.clamp_min(torch.finfo(out.dtype).tiny) * (uniform > 0)
        out = out / out.sum(-1, keepdim=True).clamp_min(torch.finfo(out.dtype).tiny)
    return out


def encoder_decoder_rollout(encoder: torch.Tensor, decoder: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
    """Source rollout of an encoder-decoder: R^{ii} = rollout(encoder ``[L_e, ..., H, N, N]``), R^{qq} =
    rollout(decoder self-attention ``[L_d, ..., H, T, T]``), then R^{qi} = R^{qq} · mean_h(cross) · R^{ii} with the last
    decoder layer's cross-attention ``cross [..., H, T, N]``; rows renormalised to sum to 1 ``[..., T, N]``.

    Chefer et al. write (R^{qq})^T here; in a causal decoder its row t would read the cross-attention of later
    positions, which cannot influence step t, so trilens reads row t of R^{qq} (the positions t draws on)."""
    r_ii, r_qq = rollout(encoder), rollout(decoder)
    out = r_qq @ cross.mean(-3) @ r_ii
    return out / out.sum(-1, keepdim=True).clamp_min(torch.finfo(out.dtype).tiny)
