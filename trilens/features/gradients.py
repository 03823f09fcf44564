"""The model's weight gradients at the class slot, flattened: what GRADIEND reads and pre-prunes.

A batch of same-class rows runs forward once; the loss at the slot (cross-entropy, averaged over the batch as HF's own
loss is) is taken for the factual and for the counterfactual token, and each gets one backward pass through the chosen
parameters only (every other weight is frozen for the pass, so no gradient is computed for it). Weights never keep a
``.grad``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..capture.grad_hooks import frozen_weights, head_rows
from ..capture.grad_scale import grad as scaled_grad
from ..capture.interventions import Intervention, RunState
from ..capture.objectives import token_id
from ..capture.trace import intervention_hooks
from ..errors import InputError
from ..inputs import Batch
from .data import MASK_PLACEHOLDER, FeatureRow
from .params import ParamLayout, aliases, check_weights_shared

if TYPE_CHECKING:
    from ..model import Model

PAIRINGS = ("factual", "counterfactual", "diff")  # diff = factual - counterfactual


@dataclass
class SlotBatch:
    """Encoded rows: the model's batch, each row's slot position in the scored stack, its factual and counterfactual
    token ids (-1: none; a neutral row without a factual token reads the model's own prediction)."""

    batch: Batch
    positions: torch.Tensor
    factual: torch.Tensor
    counterfactual: torch.Tensor


def _class_token(model: Model, token: str | int | None, row: int, what: str) -> int:
    if token is None:
        return -1
    try:
        return token_id(model, token)
    except InputError as err:
        raise InputError(f"row {row}: the {what} token {token!r} is not one token of this model: {err}") from None


def slot_batch(model: Model, rows: Sequence[FeatureRow]) -> SlotBatch:
    """Encode ``rows`` for ``model`` and find each row's class slot (see ``trilens.features.data``)."""
    if not rows:
        raise InputError("no rows were given.")
    tok = model.tokenizer
    factual = torch.tensor([_class_token(model, r.factual, i, "factual") for i, r in enumerate(rows)])
    counter = torch.tensor([_class_token(model, r.counterfactual, i, "counterfactual") for i, r in enumerate(rows)])
    if model.family == "encoder":
        mask = getattr(tok, "mask_token", None)
        if mask is None:
            raise InputError(f"{model.name}'s tokenizer has no mask token, so its texts have no class slot.")
        batch = model.encode([r.text.replace(MASK_PLACEHOLDER, mask) for r in rows])
        hits = batch.input_ids == tok.mask_token_id
        counts = hits.sum(1)
        if bool((counts != 1).any()):
            i = int((counts != 1).nonzero()[0])
            raise InputError(f"row {i} ({rows[i].text!r}) has {int(counts[i])} mask tokens; an encoder-only text needs "
                             f"exactly one {MASK_PLACEHOLDER} (or {mask}) as its class slot.")
        positions = hits.int().argmax(1)
    elif model.family == "decoder":
        batch = model.encode([r.text for r in rows])
        positions = batch.attention_mask.sum(1) - 1  # right-padded: the last real token predicts the slot
    else:
        pairs = []
        positions_ = []
        for i, r in enumerate(rows):
            prefix = tok(r.prefix, add_special_tokens=False)["input_ids"] if r.prefix else []
            slot = int(factual[i]) if factual[i] >= 0 else model.pad_token_id
            pairs.append((r.text, [*prefix, slot]))
            positions_.append(len(prefix))
        batch = model.encode(pairs)
        positions = torch.tensor(positions_)
    return SlotBatch(batch, positions, factual, counter)


def slot_logprobs(model: Model, sb: SlotBatch, interventions: Sequence[Intervention] = ()) -> torch.Tensor:
    """Log-probabilities ``[rows, vocab]`` at each row's slot (the LM head runs on the slots only), with optional
    interventions (``AblateNeurons``, ``Hook``...)."""
    batch = sb.batch.to(model.device)
    hooks = intervention_hooks(model, interventions, RunState(masks=dict(batch.masks))) if interventions else []
    with head_rows(model, sb.positions[:, None]), model.hooks(hooks):
        logits = model.hf_model(**batch.forward_kwargs()).logits[:, 0]
    return logits.float().log_softmax(-1)


class GradientReader:
    """Flat weight gradients of ``layout``'s parameters (only coordinates ``keep``, if given) at the class slot."""

    def __init__(self, model: Model, layout: ParamLayout, keep: torch.Tensor | None = None):
        self.model, self.layout = model, layout
        check_weights_shared(model, layout.names)
        self.params = layout.parameters(model)
        # The leaves autograd sees: each parameter and the views the forward reads it through.
        self.leaves = aliases(model, self.params)
        self._flat_leaves = [a for group in self.leaves for a in group]
        self.keep = None if keep is None else keep.to(torch.long)
        self._pieces = None if keep is None else layout.pieces(self.keep)

    @property
    def size(self) -> int:
        return self.layout.size if self.keep is None else int(self.keep.numel())

    def _grad(self, loss: torch.Tensor, retain_graph: bool = False) -> torch.Tensor:
        """d loss / d parameters, flattened (only the kept coordinates)."""
        found = iter(scaled_grad(loss, self._flat_leaves, retain_graph=retain_graph, allow_unused=True))
        grads = [_gather(p, group, [next(found) for _ in group]) for p, group in zip(self.params, self.leaves)]
        return self._flat(grads)

    def _flat(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        if self._pieces is None:
            return self.layout.flatten(grads).float()
        return torch.cat([grads[i].reshape(-1)[local] for i, local, _ in self._pieces]).float()

    def pair(self, rows: Sequence[FeatureRow]) -> tuple[torch.Tensor, torch.Tensor]:
        """(factual, counterfactual) gradient of the batch-mean loss at the slot -> two ``[size]`` vectors (one forward,
    two backward passes)."""
        sb = slot_batch(self.model, rows)
        if bool((sb.factual < 0).any()) or bool((sb.counterfactual < 0).any()):
            raise InputError("every row of a training batch needs a factual and a counterfactual token.")
        with frozen_weights(self.model.hf_model, self._flat_leaves), torch.enable_grad():
            logp = slot_logprobs(self.model, sb)
            idx = torch.arange(len(rows), device=logp.device)
            loss_f = -logp[idx, sb.factual.to(logp.device)].mean()
            loss_c = -logp[idx, sb.counterfactual.to(logp.device)].mean()
            return self._grad(loss_f, retain_graph=True), self._grad(loss_c)

    def each(self, rows: Sequence[FeatureRow], kind: str = "factual", progress: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """One row at a time, one backward pass each: the ``kind`` pairing's gradient of each row ``[rows, size]``
        (``diff`` is the gradient of the loss difference), and the factual token each was taken for. A row without a
        counterfactual token is read by its factual gradient whatever ``kind``; one without a factual token by the
        model's own top prediction."""
        from tqdm.auto import tqdm

        out, used = [], []
        for r in tqdm(rows, desc="gradients", disable=not progress, leave=False):
            sb = slot_batch(self.model, [r])
            with frozen_weights(self.model.hf_model, self._flat_leaves), torch.enable_grad():
                logp = slot_logprobs(self.model, sb)[0]
                target = int(sb.factual[0]) if sb.factual[0] >= 0 else int(logp.argmax())
                loss = -logp[target]
                if sb.counterfactual[0] >= 0:
                    loss = paired(loss, -logp[int(sb.counterfactual[0])], kind)
                out.append(self._grad(loss))
            used.append(target)
        return torch.stack(out), torch.tensor(used)


def _gather(param: torch.Tensor, leaves: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """The gradient of ``param`` from those of its leaves (itself, or views into its memory)."""
    if len(leaves) == 1 and leaves[0] is param and grads[0] is not None:
        return grads[0]  # the common case: read directly, no copy
    out = torch.zeros(param.shape, dtype=param.dtype, device=param.device)
    base = param.storage_offset()
    for leaf, g in zip(leaves, grads):
        if g is None:
            continue
        if leaf is param:
            out += g
        else:
            out.as_strided(leaf.shape, leaf.stride(), leaf.storage_offset() - base).add_(g)
    return out


def paired(g_factual: torch.Tensor, g_counter: torch.Tensor, kind: str) -> torch.Tensor:
    """One of the pairings of two gradients (or of the two losses, which pair alike): ``factual``, ``counterfactual``
    or ``diff`` (factual - counterfactual)."""
    if kind == "factual":
        return g_factual
    if kind == "counterfactual":
        return g_counter
    if kind == "diff":
        return g_factual - g_counter
    raise InputError(f"a gradient pairing is one of {', '.join(PAIRINGS)}, not {kind!r}.")


def source_gradients(reader: GradientReader, rows: Sequence[FeatureRow], source: str,
                     progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One ``source`` gradient per row ``[rows, size]`` (GRADIEND encodes single texts), and the token each factual
    gradient was taken for. A row without a counterfactual token (neutral text) gets its factual gradient whatever the
    pairing, as the GRADIEND authors encode neutral text."""
    if source not in PAIRINGS:
        raise InputError(f"a gradient pairing is one of {', '.join(PAIRINGS)}, not {source!r}.")
    return reader.each(rows, source, progress=progress)


def top_coordinates(reader: GradientReader, batches: Sequence[Sequence[FeatureRow]], fraction: float,
                    progress: bool = False) -> torch.Tensor:
    """The ``ceil(fraction x size)`` flat coordinates with the largest mean |factual - counterfactual| gradient over
    ``batches``, sorted (pre-pruning)."""
    if not 0 < fraction <= 1:
        raise InputError(f"the kept fraction must be in (0, 1], not {fraction}.")
    from tqdm.auto import tqdm

    total = torch.zeros(reader.size)
    for rows in tqdm(batches, desc="pre-pruning", disable=not progress, leave=False):
        g_f, g_c = reader.pair(rows)
        total += (g_f - g_c).abs()
    k = max(1, math.ceil(fraction * reader.size))
    kept = torch.topk(total, k, sorted=False).indices
    return kept.sort().values if reader.keep is None else reader.keep[kept].sort().values
