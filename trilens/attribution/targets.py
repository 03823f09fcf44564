"""What is attributed: per input, the steps (a generated or given target's tokens; an encoder's masked slots), where
each is read, its token and its foil, and the token strings of the source and the target prefix."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..capture.objectives import ScoredRows, token_id, token_position
from ..capture.steps_input import StepInputs, step_inputs
from ..errors import InputError
from ..inputs import token_names

if TYPE_CHECKING:
    from ..model import Model


@dataclass
class AttributionSteps:
    """``rows`` encode (``model.encode``) to the teacher-forced batch; ``scored`` holds each step's position (in the
    scored stack), token, foil and validity ``[input, step]``."""

    rows: list[Any]
    scored: ScoredRows
    source_lengths: list[int]
    target_lengths: list[int]  # prefix tokens attributed per input (0 for encoders)
    source_tokens: list[list[str]]
    target_tokens: list[list[str]]
    step_tokens: list[list[str]]
    generated: bool


def _names(model: Model, ids: Sequence[int]) -> list[str]:
    return token_names(model.tokenizer, ids)


def attribution_steps(model: Model, inputs: Any, targets: Any = None, *, contrast: Any = None, position: Any = None,
                      max_new_tokens: int = 20, truncate: bool = False, **generate_kwargs: Any) -> AttributionSteps:
    """The steps to attribute for ``inputs`` (see ``attribute``)."""
    if model.family == "encoder":
        return _masked_steps(model, inputs, targets, contrast, position, truncate)
    if position is not None:
        raise InputError("position= chooses an encoder's slot; a generating model is attributed at every step.")
    steps = inputs if isinstance(inputs, StepInputs) else step_inputs(
        model, inputs, targets, max_new_tokens=max_new_tokens, truncate=truncate, **generate_kwargs)
    if not steps.generated:  # a given target, not the model's own tokens
        _check_known(model, steps.step_ids, "target")
    foils = None if contrast is None else _foils(model, steps, contrast)
    counts = steps.valid.sum(1).tolist()
    if model.family == "decoder":
        n = steps.source_lengths.tolist()
        sources = [_names(model, r[:k]) for r, k in zip(steps.rows, n)]
        targets_ = [_names(model, r[k: k + c - 1]) for r, k, c in zip(steps.rows, n, counts)]
        target_lengths = [c - 1 for c in counts]
    else:
        sources = [_names(model, r[0]) for r in steps.rows]
        dec = model.encode(steps.rows).ids["decoder"]
        targets_ = [_names(model, dec[b, :c].tolist()) for b, c in enumerate(counts)]
        target_lengths = counts
    step_tokens = [_names(model, [i for i in row if i >= 0]) for row in steps.step_ids.tolist()]
    scored = ScoredRows(steps.positions, steps.step_ids.clamp_min(0), foils, steps.valid)
    return AttributionSteps(steps.rows, scored, steps.source_lengths.tolist(), target_lengths, sources, targets_,
                            step_tokens, steps.generated)


def _check_known(model: Model, ids: torch.Tensor, what: str) -> None:
    """Given text that the tokenizer could only encode as its unknown token is refused (it would attribute [UNK])."""
    unk = getattr(model.tokenizer, "unk_token_id", None)
    if unk is None or not bool((ids == unk).any()):
        return
    b, t = (ids == unk).nonzero()[0].tolist()
    raise InputError(f"the tokenizer cannot encode {what} token {t + 1} of input {b}: it becomes "
                     f"{model.tokenizer.unk_token!r}. Use words this model's vocabulary holds (or give token ids).")


def _foils(model: Model, steps: StepInputs, contrast: Any) -> torch.Tensor:
    """``[input, step]`` foil ids. ``contrast`` is one item for every input or a list of one per input; an item is a
    contrast text (tokenized like the target: one token per step), a list of foil tokens (one per step), or one token
    id (every step)."""
    n, counts = len(steps.rows), steps.valid.sum(1).tolist()
    items = [contrast] * n if isinstance(contrast, (str, int)) else list(contrast)
    if len(items) != n:
        raise InputError(f"{len(items)} contrasts for {n} inputs: give one contrast (a text, a token id or a list of "
                         "per-step foils) for all inputs, or a list of one per input.")
    texts = [i for i, c in enumerate(items) if isinstance(c, str)]
    from_text: dict[int, list[int]] = {}
    if texts:
        if model.family == "decoder":
            other = step_inputs(model, [steps.rows[i][: int(steps.source_lengths[i])] for i in texts],
                                [items[i] for i in texts])
        else:
            other = step_inputs(model, [(steps.rows[i][0], items[i]) for i in texts])
        from_text = {i: [x for x in other.step_ids[j].tolist() if x >= 0] for j, i in enumerate(texts)}
    foils = torch.zeros_like(steps.step_ids)
    for b, c in enumerate(items):
        if isinstance(c, int) and not isinstance(c, bool):
            ids = [token_id(model, c)] * counts[b]
        elif b in from_text:
            ids = from_text[b]
        elif isinstance(c, (list, tuple)):
            ids = [token_id(model, x) for x in c]
        else:
            raise InputError(f"a contrast is a text, a token id or a list of per-step foil tokens, not {type(c).__name__}.")
        if len(ids) != counts[b]:
            what = f"contrast text {c!r} has" if b in from_text else "the foil list has"
            raise InputError(f"input {b}: the target has {counts[b]} tokens but {what} {len(ids)}; a contrastive "
                             "target needs one foil per step (an aligned text of the same token length).")
        foils[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    _check_known(model, foils.masked_fill(~steps.valid, -1), "contrast")
    return foils


def _masked_steps(model: Model, inputs: Any, targets: Any, contrast: Any, position: Any,
                  truncate: bool) -> AttributionSteps:
    """An encoder's steps: its mask slots (every mask token of each text), or the ``position`` given."""
    texts = [inputs] if isinstance(inputs, str) else list(inputs)
    if not texts:
        raise InputError("no inputs were given: pass at least one text.")
    batch = model.encode(texts, truncate=truncate)
    mask, ids = batch.attention_mask.bool(), batch.input_ids
    n = len(texts)
    lengths = mask.sum(1).tolist()
    mask_id = getattr(model.tokenizer, "mask_token_id", None)
    slots: list[list[int]] = []
    for b in range(n):
        if position is not None:
            slots.append([token_position(position[b] if isinstance(position, (list, tuple)) else position,
                                         lengths[b], b)])
        else:
            hits = (ids[b] == mask_id).nonzero().flatten().tolist() if mask_id is not None else []
            if not hits:
                raise InputError(f"input {b} has no mask token to attribute; mark the slot with "
                                 f"{getattr(model.tokenizer, 'mask_token', '[MASK]')} or pass position=.")
            slots.append(hits)
    n_steps = max(len(s) for s in slots)
    positions = torch.zeros(n, n_steps, dtype=torch.long)
    valid = torch.zeros(n, n_steps, dtype=torch.bool)
    for b, s in enumerate(slots):
        positions[b, : len(s)], valid[b, : len(s)] = torch.tensor(s), True
    tokens = torch.zeros_like(positions)
    if targets is None:
        with torch.inference_mode():
            logits = model.hf_model(**batch.to(model.device).forward_kwargs()).logits
        tokens = logits.gather(1, positions.to(logits.device)[..., None].expand(-1, -1, logits.shape[-1])).argmax(-1).cpu()
    else:
        for b, t in enumerate(_per_input(targets, n, "target")):
            tokens[b, : len(slots[b])] = _slot_ids(model, t, len(slots[b]), b, "target")
    foils = None
    if contrast is not None:
        foils = torch.zeros_like(positions)
        for b, c in enumerate(_per_input(contrast, n, "contrast")):
            foils[b, : len(slots[b])] = _slot_ids(model, c, len(slots[b]), b, "contrast")
    tokens = tokens.masked_fill(~valid, 0)
    rows = [ids[b, : lengths[b]].tolist() for b in range(n)]
    step_tokens = [_names(model, tokens[b, : len(slots[b])].tolist()) for b in range(n)]
    return AttributionSteps(rows, ScoredRows(positions, tokens, foils, valid), lengths, [0] * n,
                            [_names(model, r) for r in rows], [[] for _ in rows], step_tokens, targets is None)


def _per_input(value: Any, n: int, what: str) -> list[Any]:
    """One ``value`` per input: a list of ``n`` (one per input), else the value itself for every input."""
    if isinstance(value, (list, tuple)) and n > 1:
        if len(value) != n:
            raise InputError(f"{len(value)} {what}s for {n} inputs: give one, or one per input.")
        return list(value)
    return [value] * n


def _slot_ids(model: Model, value: Any, n_slots: int, b: int, what: str) -> torch.Tensor:
    """One token per mask slot of input ``b``: a token (for every slot) or a list of one per slot."""
    items = list(value) if isinstance(value, (list, tuple)) else [value] * n_slots
    if len(items) != n_slots:
        raise InputError(f"input {b} has {n_slots} mask slots but {len(items)} {what} tokens: give one per slot.")
    return torch.tensor([token_id(model, x) for x in items], dtype=torch.long)
