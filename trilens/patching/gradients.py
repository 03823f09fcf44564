"""The metric's gradient at the sweep's sites, in one forward and backward pass over the patched run: what attribution
patching multiplies with the activation differences. ``stops`` drop the gradient through chosen sites (GradDrop): the
forward values are unchanged, but nothing flows back through those activations, so what a site upstream receives is
its gradient along every other path."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..capture.grad_hooks import frozen_weights, input_embeddings, keep_hook
from ..capture.grad_scale import grad as scaled_grad
from ..errors import SiteError

if TYPE_CHECKING:
    from ..inputs import Batch
    from ..model import Model
    from .metrics import ResolvedMetric


def _stop(x: torch.Tensor, hook: Any = None) -> torch.Tensor:
    return x.detach()


def metric_gradients(model: Model, batch: Batch, bound: ResolvedMetric, sites: Sequence[str],
                     stops: Sequence[Sequence[str]] = ((),)) -> list[dict[str, torch.Tensor]]:
    """For each entry of ``stops`` (a list of sites whose gradient is dropped), ``{site: d metric / d activation}`` at
    ``sites`` (``[pair, ...activation]``, summed over pairs' own metrics: each pair's gradient is its own). A site
    the gradient cannot reach (after the scored positions, or stopped) gets zeros."""
    out = []
    for stopped in stops:
        store: dict[str, torch.Tensor] = {}
        hooks = [(name, keep_hook(store, name)) for name in sites] + [(name, _stop) for name in stopped]
        with frozen_weights(model.hf_model), torch.enable_grad(), input_embeddings(model), model.hooks(hooks):
            logits = model.hf_model(**batch.forward_kwargs()).logits
            value = bound.of_run(logits, batch)
        missing = [n for n in sites if n not in store]
        if missing:
            raise SiteError(f"site {missing[0]} did not fire in the patched run.")
        live = [n for n in sites if store[n].requires_grad] if value.requires_grad else []  # all stopped: no path
        grads = dict(zip(live, scaled_grad(value.sum(), [store[n] for n in live], allow_unused=True))) if live else {}
        out.append({n: store[n].new_zeros(store[n].shape) if grads.get(n) is None else grads[n].detach() for n in sites})
    return out
