"""Relevancy for attention models (Chefer, Gur & Wolf 2021, "Generic Attention-model Explainability"): the rules,
as batched tensor operations over inputs and target steps.

Each layer contributes Ā = E_h[(∇A ⊙ A)⁺]: the gradient of the target's score with respect to the attention
probabilities times the probabilities, negatives clamped to 0, then the head mean. Relevancy starts at the identity
(every token is relevant to itself) and each self-attention layer adds Ā · R; an encoder-decoder's cross-attention adds
(R̄^{qq})ᵀ · Ā^{qi} · R̄^{ii}, where R̄ is R with the identity removed, rows normalised, and the identity put back.
"""

from __future__ import annotations

import torch


def gradient_weighted(pattern: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Ā = mean over heads of (∇A ⊙ A)⁺: ``pattern [B, H, Q, K]`` and per-step gradients ``grad [B, T, H, Q, K]`` ->
    ``[B, T, Q, K]``."""
    return (grad * pattern[:, None]).clamp_min(0).mean(2)


def self_attention_rule(weighted: list[torch.Tensor]) -> torch.Tensor:
    """R over one stack's layers, in order: R = I, then R += Ā_l · R for each ``[..., S, S]`` in ``weighted``."""
    s = weighted[0].shape[-1]
    r = torch.eye(s, dtype=weighted[0].dtype, device=weighted[0].device).expand_as(weighted[0]).clone()
    for a in weighted:
        r = r + a @ r
    return r


def normalised(r: torch.Tensor) -> torch.Tensor:
    """R̄: (R − I) divided by its row sums (rows that sum to 0 stay 0), plus I."""
    eye = torch.eye(r.shape[-1], dtype=r.dtype, device=r.device)
    hat = r - eye
    sums = hat.sum(-1, keepdim=True)
    return torch.where(sums > 0, hat / sums.clamp_min(torch.finfo(r.dtype).tiny), torch.zeros_like(hat)) + eye


def encoder_decoder_rule(encoder: list[torch.Tensor], decoder: list[torch.Tensor],
                         cross: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(R^{qi} ``[..., T, N]``, R^{qq} ``[..., T, T]``): the encoder's self-attention updates R^{ii}; each decoder block's
    self-attention updates R^{qq} and R^{qi}, then its cross-attention adds (R̄^{qq})ᵀ Ā^{qi} R̄^{ii}."""
    r_ii = self_attention_rule(encoder)
    bar_ii = normalised(r_ii)
    t, n = cross[0].shape[-2:]
    r_qq = torch.eye(t, dtype=cross[0].dtype, device=cross[0].device).expand(*cross[0].shape[:-2], t, t).clone()
    r_qi = torch.zeros_like(cross[0])
    for self_a, cross_a in zip(decoder, cross):
        r_qq = r_qq + self_a @ r_qq
        r_qi = r_qi + self_a @ r_qi
        r_qi = r_qi + normalised(r_qq).transpose(-1, -2) @ cross_a @ bar_ii
    return r_qi, r_qq
