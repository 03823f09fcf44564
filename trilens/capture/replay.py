"""Replaying what a patch cannot change. A run patched at layer l computes blocks 0..l-1 exactly as the unpatched run
did, so their outputs are recorded once and handed back instead of recomputed (an encoder-decoder's decoder patch skips
the whole encoder). In a causal decoder-only model a patch at position p cannot change positions before p either: the
run starts at p, reading the unpatched run's keys and values of the earlier positions from its KV cache. Exact: the
replayed blocks return the tensors they returned before, and the cache holds the keys and values they computed."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from ..architectures import STACK_PREFIXES

if TYPE_CHECKING:
    from ..inputs import Batch
    from ..model import Model


class BlockReplay:
    """The outputs of every block of ``model`` on ``batch`` (one row per pair), and a decoder-only model's KV cache,
    ready to be handed back."""

    def __init__(self, model: Model, batch: Batch):
        self.model = model
        self.blocks = [model.bridge.get_submodule(f"{STACK_PREFIXES[model.family][stack]}.{layer}")
                       for stack in model.stacks for layer in range(model.n_layers[stack])]
        self.n_pairs = batch.input_ids.shape[0]
        self.outputs: list[Any] = [None] * len(self.blocks)
        self.causal = model.family == "decoder"

        def record(i: int):
            def hook(module: torch.nn.Module, args: Any, out: Any) -> None:
                self.outputs[i] = out
            return hook

        handles = [b.register_forward_hook(record(i)) for i, b in enumerate(self.blocks)]
        try:
            with torch.no_grad():
                out = model.hf_model(**batch.forward_kwargs(), **({"use_cache": True} if self.causal else {}))
        finally:
            for h in handles:
                h.remove()
        self.cache = getattr(out, "past_key_values", None) if self.causal else None
        self.width = batch.input_ids.shape[1]
        layers = getattr(self.cache, "layers", None) or []
        if not layers or not all(getattr(la, "is_croppable", False) and not getattr(la, "is_sliding", False)
                                 for la in layers):
            self.cache = None  # sliding-window or recurrent caches cannot be cut at a position: run whole sequences

    def index(self, stack: str, layer: int) -> int:
        """The global position of a block: an encoder-decoder's encoder blocks come first."""
        before = 0
        for s in self.model.stacks:
            if s == stack:
                return before + layer
            before += self.model.n_layers[s]
        raise KeyError(stack)

    @property
    def can_start_late(self) -> bool:
        """Whether runs can start at a later position (a causal decoder-only model with a croppable KV cache)."""
        return self.cache is not None

    @contextmanager
    def resumed(self, batch: Batch, pairs: torch.Tensor, upto: int, start: int = 0) -> Iterator[dict[str, Any]]:
        """Yields the HF forward arguments of ``batch`` (the rows of ``pairs``) that start at position ``start`` (the
        tokens from there on, the unpatched run's cache of the positions before it); during the block, blocks
        ``0 .. upto-1`` return their recorded outputs for those rows instead of computing."""
        kwargs = batch.forward_kwargs()
        if start:
            cache = copy.deepcopy(self.cache)
            cache.crop(start - self.width)  # a negative count: drop the positions from ``start`` on
            cache.batch_select_indices(pairs.to(batch.input_ids.device))
            ids = kwargs["input_ids"]
            positions = torch.arange(start, ids.shape[1], device=ids.device)
            kwargs = {**kwargs, "input_ids": ids[:, start:], "past_key_values": cache,
                      "position_ids": positions[None].expand(ids.shape[0], -1)}
        saved = []
        for i in range(min(upto, len(self.blocks))):
            block = self.blocks[i]
            out = _take(self.outputs[i], pairs, self.n_pairs, start, self.width)
            saved.append((block, block.__dict__.get("forward")))
            # object.__setattr__: the bridge's components route attribute writes to the HF module they wrap
            object.__setattr__(block, "forward", (lambda o: (lambda *args, **kwargs: o))(out))
        try:
            yield kwargs
        finally:
            for block, before in saved:
                if before is None:
                    object.__delattr__(block, "forward")
                else:
                    object.__setattr__(block, "forward", before)


def _take(out: Any, pairs: torch.Tensor, n_pairs: int, start: int, width: int) -> Any:
    """``out`` (tensor, tuple, list or None) with each per-pair tensor's rows picked (and positions from ``start``);
    tensors of batch 1 broadcast."""
    if isinstance(out, torch.Tensor):
        if out.dim() and out.shape[0] == n_pairs:
            out = out[pairs.to(out.device)]
        elif out.dim() and out.shape[0] == 1:
            out = out.expand(len(pairs), *out.shape[1:])
        if start and out.dim() > 1 and out.shape[1] == width:
            out = out[:, start:]
        return out
    if isinstance(out, (tuple, list)):
        return type(out)(_take(o, pairs, n_pairs, start, width) for o in out)
    return out
