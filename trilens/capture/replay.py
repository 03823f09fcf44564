"""Replaying the blocks a patch cannot change: a run patched at layer l computes blocks 0..l-1 exactly as the unpatched
run did, so their outputs are recorded once and handed back instead of recomputed (an encoder-decoder's decoder
patch skips the whole encoder). Exact: the replayed blocks return the very tensors they returned before."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from ..architectures import STACK_PREFIXES

if TYPE_CHECKING:
    from ..inputs import Batch
    from ..model import Model


class BlockReplay:
    """The outputs of every block of ``model`` on ``batch`` (one row per pair), ready to be handed back."""

    def __init__(self, model: Model, batch: Batch):
        self.model = model
        self.blocks = [model.bridge.get_submodule(f"{STACK_PREFIXES[model.family][stack]}.{layer}")
                       for stack in model.stacks for layer in range(model.n_layers[stack])]
        self.n_pairs = batch.input_ids.shape[0]
        self.outputs: list[Any] = [None] * len(self.blocks)

        def record(i: int):
            def hook(module: torch.nn.Module, args: Any, out: Any) -> None:
                self.outputs[i] = out
            return hook

        handles = [b.register_forward_hook(record(i)) for i, b in enumerate(self.blocks)]
        try:
            with torch.no_grad():
                model.hf_model(**batch.forward_kwargs())
        finally:
            for h in handles:
                h.remove()

    def index(self, stack: str, layer: int) -> int:
        """The global position of a block: an encoder-decoder's encoder blocks come first."""
        before = 0
        for s in self.model.stacks:
            if s == stack:
                return before + layer
            before += self.model.n_layers[s]
        raise KeyError(stack)

    @contextmanager
    def skipping(self, upto: int, pairs: torch.Tensor) -> Iterator[None]:
        """During the block, blocks ``0 .. upto-1`` return their recorded outputs for the rows' ``pairs`` instead of
        computing."""
        saved = []
        for i in range(min(upto, len(self.blocks))):
            block = self.blocks[i]
            out = _take(self.outputs[i], pairs, self.n_pairs)
            saved.append((block, block.__dict__.get("forward")))
            # object.__setattr__: the bridge's components route attribute writes to the HF module they wrap
            object.__setattr__(block, "forward", (lambda o: (lambda *args, **kwargs: o))(out))
        try:
            yield
        finally:
            for block, before in saved:
                if before is None:
                    object.__delattr__(block, "forward")
                else:
                    object.__setattr__(block, "forward", before)


def _take(out: Any, pairs: torch.Tensor, n_pairs: int) -> Any:
    """``out`` (tensor, tuple, list or None) with each per-pair tensor's rows picked; tensors of batch 1 broadcast."""
    if isinstance(out, torch.Tensor):
        if out.dim() and out.shape[0] == n_pairs:
            return out[pairs.to(out.device)]
        if out.dim() and out.shape[0] == 1:
            return out.expand(len(pairs), *out.shape[1:])
        return out
    if isinstance(out, (tuple, list)):
        return type(out)(_take(o, pairs, n_pairs) for o in out)
    return out
