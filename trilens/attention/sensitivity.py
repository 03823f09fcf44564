"""Source sensitivity (after Fu et al. 2023): S_l(t) = ||d h^l_p / d E_src||_F, the Frobenius norm of the Jacobian of layer
l's attention output (and residual stream) at the position p that predicts step t, with respect to the source's input
embeddings.

Computed in forward mode (``capture.jvp``): one forward pass per input direction gives J u at every layer and step at
once, where backward mode needs one pass per output coordinate, per layer and step. ``"exact"`` runs the N x d basis
directions of the source (||J||_F^2 = sum over them of ||J e_i||^2); ``"estimate"`` runs ``probes`` Gaussian directions
(||J||_F^2 = E ||J v||^2, v ~ N(0, I): unbiased, with the standard error of the probes' mean); ``"auto"`` is exact while
the source has at most ``EXACT_DIRECTIONS`` coordinates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from ..capture.jvp import directional_derivatives
from ..capture.steps_input import StepInputs
from ..errors import InputError

if TYPE_CHECKING:
    from ..model import Model

METHODS = ("auto", "exact", "estimate")
VIEWS = ("attention", "residual")
EXACT_DIRECTIONS = 4096  # source tokens x d_model up to which "auto" is exact


def view_sites(model: Model) -> dict[str, list[str]]:
    """Per view, the decoder's hook names by layer: the attention output that reads the source (self-attention in a
    decoder-only model, cross-attention in an encoder-decoder) and the residual stream after each block."""
    layers = range(model.n_layers["decoder"])
    attn = "attn_out" if model.family == "decoder" else "cross_attn_out"
    return {"attention": [model.site(attn, layer, "decoder") for layer in layers],
            "residual": [model.site("resid_post", layer, "decoder") for layer in layers]}


def _basis(length: int, d: int):
    """Directions ``a .. b - 1`` of the source's basis: coordinate i is token i // d, dimension i % d (the source is
    the first tokens of its stack)."""
    def make(a: int, b: int) -> torch.Tensor:
        u = torch.zeros(b - a, length, d)
        i = torch.arange(a, b)
        u[torch.arange(b - a), i // d, i % d] = 1
        return u
    return make


def _gaussian(n_src: int, length: int, d: int, generator: torch.Generator):
    """Standard normal directions over the source's ``n_src`` tokens (zero elsewhere)."""
    def make(a: int, b: int) -> torch.Tensor:
        u = torch.zeros(b - a, length, d)
        u[:, :n_src] = torch.randn(b - a, n_src, d, generator=generator)
        return u
    return make


def source_sensitivity(model: Model, steps: StepInputs, *, method: str = "auto", probes: int = 32, seed: int = 0,
                       progress: bool = False) -> dict[str, torch.Tensor]:
    """``{view: S [L, B, T], view + "_se": standard error [L, B, T]}`` for views ``"attention"`` and ``"residual"``
    (NaN where a step is not valid; the standard error is 0 where exact), and ``"exact" [B]``: which inputs were exact."""
    if method not in METHODS:
        raise InputError(f"unknown sensitivity method {method!r}; choose one of {', '.join(METHODS)}.")
    if probes < 2:
        raise InputError(f"probes must be at least 2 (the standard error needs two), not {probes}.")
    sites = view_sites(model)
    names = [n for v in VIEWS for n in sites[v]]
    L, (B, T), d = len(sites["attention"]), steps.valid.shape, model.d_model
    out = {v: torch.full((L, B, T), float("nan")) for v in VIEWS}
    out.update({f"{v}_se": torch.full((L, B, T), float("nan")) for v in VIEWS})
    exact_rows = torch.zeros(B, dtype=torch.bool)
    generator = torch.Generator().manual_seed(seed)
    for b in tqdm(range(B), desc="source sensitivity", unit="input", disable=not progress):
        batch = model.encode([steps.rows[b]]).to(model.device)
        n_src, n_steps = int(steps.source_lengths[b]), int(steps.valid[b].sum())
        length = batch.ids[steps.source_stack].shape[1]
        exact = method == "exact" or (method == "auto" and n_src * d <= EXACT_DIRECTIONS)
        make = _basis(length, d) if exact else _gaussian(n_src, length, d, generator)
        k = n_src * d if exact else probes
        at = steps.positions[b, :n_steps].to(model.device)
        squares = directional_derivatives(model, batch, steps.source_stack, make, k, names,
                                          lambda _, ju: ju[:, at].float().pow(2).sum(-1))  # [k, steps]
        for v in VIEWS:
            sq = torch.stack([squares[n] for n in sites[v]]).cpu()  # [L, k, steps]
            if exact:
                out[v][:, b, :n_steps] = sq.sum(1).sqrt()
                out[f"{v}_se"][:, b, :n_steps] = 0.0
            else:
                mean, se_sq = sq.mean(1), sq.std(1) / k ** 0.5
                s = mean.sqrt()
                out[v][:, b, :n_steps] = s
                out[f"{v}_se"][:, b, :n_steps] = se_sq / (2 * s.clamp_min(1e-30))  # delta method: se(sqrt(x)) = se(x) / 2sqrt(x)
        exact_rows[b] = exact
    out["exact"] = exact_rows
    return out
