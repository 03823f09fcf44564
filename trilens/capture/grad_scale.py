"""Gradients that float16 does not lose: ``grad`` is ``torch.autograd.grad`` with the loss scaled where the inputs are
float16, as mixed-precision training scales its loss.

float16 has a narrow exponent: values below about 6e-5 are subnormal and below 6e-8 they are zero, so the gradients
of a small metric (a KL of 1e-5 nats) lose their bits or vanish on the way back through a float16 model. Seeding the
backward pass with ``scale`` instead of 1 keeps them in float16's range; the result is divided by the scale in float32.
Where a scaled pass overflows (an inf or NaN), it runs again with a smaller scale. bfloat16 and float32 have float32's
exponent and are left as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

HALF_SCALE = 2.0 ** 16  # the first scale tried (AMP's GradScaler starts here too)
STEP = 2.0 ** 4  # the scale is divided by this after an overflow


def grad(output: torch.Tensor, inputs: Sequence[torch.Tensor], grad_outputs: torch.Tensor | None = None,
         **kwargs: Any) -> tuple[torch.Tensor | None, ...]:
    """``torch.autograd.grad(output, inputs, grad_outputs, **kwargs)``; with float16 inputs, computed with a scaled
    seed and returned in float32 (the graph is then kept for a retry: pass ``retain_graph`` as you would anyway)."""
    if not any(t.dtype == torch.float16 for t in inputs):
        return torch.autograd.grad(output, inputs, grad_outputs=grad_outputs, **kwargs)
    seed = torch.ones_like(output) if grad_outputs is None else grad_outputs
    kwargs.pop("retain_graph", None)
    scale = HALF_SCALE
    while True:
        got = torch.autograd.grad(output, inputs, grad_outputs=seed * scale, retain_graph=True, **kwargs)
        if scale <= 1.0 or all(g is None or bool(torch.isfinite(g).all()) for g in got):
            return tuple(None if g is None else g.float() / scale for g in got)
        scale /= STEP
