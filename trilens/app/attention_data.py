"""Attention of one input for the app: the traced ``ActivationCache`` of every pattern (a stack's self-attention, the
decoder's cross-attention), whose own ``figure`` draws one head; per-head summaries for the layer x head grid, and
one token's row across heads, from the same patterns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError
from .inputs import Prepared

if TYPE_CHECKING:
    from ..capture import ActivationCache
    from ..model import Model

CROSS = "cross"
VIEW_TITLES = {"encoder": "encoder self-attention", "decoder": "decoder self-attention", CROSS: "cross-attention"}


def _entropy(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(-1).mean(-1)


def _first(p: np.ndarray) -> np.ndarray:
    return p[..., 0].mean(-1)


def _previous(p: np.ndarray) -> np.ndarray:
    q = p.shape[-2]
    if q < 2:
        return np.zeros(p.shape[:-2], dtype=np.float32)
    rows = np.arange(1, q)
    return p[..., rows, rows - 1].mean(-1)


# name -> (function of [..., query, key] patterns -> [...], unit, whether cross-attention has it)
STATISTICS = {
    "entropy": (_entropy, "nats (mean over queries)", True),
    "mass on the first token": (_first, "attention (mean over queries)", True),
    "mass on the previous token": (_previous, "attention (mean over queries ≥ 1)", False),
}


@dataclass
class AttentionMaps:
    """``cache``: the trace of every pattern (one input); ``sites[view]``: its hook name per layer;
    ``patterns[view]``: ``[layer, head, query, key]`` float32 without padding; query and key tokens of each view."""

    cache: ActivationCache
    sites: dict[str, list[str]]
    patterns: dict[str, np.ndarray]
    query_tokens: dict[str, list[str]]
    key_tokens: dict[str, list[str]]

    def figure(self, view: str, layer: int, head: int) -> Any:
        """One head's pattern with its tokens: the cache's own figure (as ``cache.figure(site, head=)`` in a
        notebook)."""
        self.head(view, layer, head)  # checks the indices
        return self.cache.figure(self.sites[view][layer], head=head)

    @property
    def views(self) -> list[str]:
        return list(self.patterns)

    def shape(self, view: str) -> tuple[int, int, int, int]:
        return self.patterns[self._view(view)].shape

    def _view(self, view: str) -> str:
        if view not in self.patterns:
            raise InputError(f"no {view!r} attention here; this model has {', '.join(self.patterns)}.")
        return view

    def head(self, view: str, layer: int, head: int) -> np.ndarray:
        """One head's ``[query, key]`` pattern (indices checked against this input's shapes)."""
        n_layers, n_heads = self.shape(view)[:2]
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise InputError(f"layer {layer}, head {head} do not exist: {view} has {n_layers} layers x {n_heads} heads.")
        return self.patterns[view][layer, head]

    def summary(self, view: str, statistic: str) -> np.ndarray:
        """``[layer, head]``: ``statistic`` of every head (see ``STATISTICS``)."""
        if statistic not in STATISTICS:
            raise InputError(f"no statistic {statistic!r}; pick one of {', '.join(STATISTICS)}.")
        fn, _, cross_ok = STATISTICS[statistic]
        if view == CROSS and not cross_ok:
            raise InputError(f"{statistic} is not defined for cross-attention (queries and keys are different texts).")
        return fn(self.patterns[self._view(view)]).astype(np.float32)

    def focus(self, view: str, layer: int, token: int) -> np.ndarray:
        """``[head, key]``: where query ``token`` attends in every head of ``layer``."""
        n_layers, _, n_query, _ = self.shape(view)
        if not (0 <= layer < n_layers and 0 <= token < n_query):
            raise InputError(f"layer {layer}, token {token} do not exist: {view} has {n_layers} layers and "
                             f"{n_query} query tokens.")
        return self.patterns[view][layer, :, token]


def attention_maps(model: Model, prepared: Prepared) -> AttentionMaps:
    """Every attention pattern of one prepared input, padding-free (one sequence), as float32 arrays."""
    views = {stack: ("attn_pattern", stack) for stack in model.stacks}
    if model.family == "encoder-decoder":
        views[CROSS] = ("cross_attn_pattern", "decoder")
    names = {view: model.sites(stack=stack, kind=kind) for view, (kind, stack) in views.items()}
    cache = model.trace(prepared.model_input, sites=[n for group in names.values() for n in group])
    patterns, queries, keys = {}, {}, {}
    for view, (kind, stack) in views.items():
        key_stack = "encoder" if view == CROSS else stack
        q_len, k_len = int(cache.mask(stack)[0].sum()), int(cache.mask(key_stack)[0].sum())
        patterns[view] = np.stack([cache[n][0, :, :q_len, :k_len].float().numpy() for n in names[view]]).astype(np.float32)
        queries[view] = cache.tokens(stack)[0][:q_len]
        keys[view] = cache.tokens(key_stack)[0][:k_len]
    return AttentionMaps(cache, names, patterns, queries, keys)


def difference(a: AttentionMaps, b: AttentionMaps, view: str, layer: int, head: int) -> tuple[np.ndarray, int, int]:
    """Pattern ``a`` minus pattern ``b`` of one head over the query and key positions both inputs have."""
    pa, pb = a.head(view, layer, head), b.head(view, layer, head)
    q, k = min(pa.shape[0], pb.shape[0]), min(pa.shape[1], pb.shape[1])
    return pa[:q, :k] - pb[:q, :k], q, k
