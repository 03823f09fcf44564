"""KL divergence to the model's final distribution, with the row-wise pieces every lens shares.

``kl_to_final`` is the tuned lens's training loss. Its gradient with respect to the logits has the
closed form ``softmax(logits) - p_final``, so it is computed in the forward pass and kept instead of
the graph of a log-softmax (fewer passes over ``[rows, vocab]``, one saved tensor).
"""

from __future__ import annotations

import torch


def row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum(-1)`` for ``[R, V]`` rows without the ``[R, V]`` product."""
    return torch.bmm(a[:, None, :], b[:, :, None])[:, 0, 0]


class _KLToFinal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, p_final: torch.Tensor, neg_entropy_final: torch.Tensor) -> torch.Tensor:
        lse = torch.logsumexp(logits, -1)
        # KL(p || softmax(z)) = sum p log p - p.z + logsumexp(z), because p sums to one
        kl = neg_entropy_final - row_dot(p_final, logits) + lse
        ctx.save_for_backward(logits.sub(lse[:, None]).exp_().sub_(p_final))
        return kl.sum()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (grad_logits,) = ctx.saved_tensors
        return grad_logits * grad_out, None, None


def kl_to_final(logits: torch.Tensor, p_final: torch.Tensor, neg_entropy_final: torch.Tensor | None = None) -> torch.Tensor:
    """``sum over rows of KL(p_final || softmax(logits))`` for ``[R, V]`` float rows (differentiable in ``logits``).

    ``neg_entropy_final`` (``sum p log p`` per row) may be passed when the same ``p_final`` is used for many lenses.
    """
    if neg_entropy_final is None:
        neg_entropy_final = row_dot(p_final, p_final.clamp_min(torch.finfo(p_final.dtype).tiny).log())
    return _KLToFinal.apply(logits, p_final, neg_entropy_final)
