"""Turn user inputs (texts, token ids, source/target pairs) into one padded batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch

from .errors import InputError

if TYPE_CHECKING:
    from .model import Model


@dataclass
class Batch:
    """A padded batch ready for the HF forward, plus per-stack token ids and masks."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    decoder_input_ids: torch.Tensor | None = None
    decoder_attention_mask: torch.Tensor | None = None
    labels: torch.Tensor | None = None  # teacher-forcing targets, -100 at padding
    ids: dict[str, torch.Tensor] = field(default_factory=dict)  # stack -> [batch, pos]
    masks: dict[str, torch.Tensor] = field(default_factory=dict)  # stack -> [batch, pos] bool

    def forward_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if self.decoder_input_ids is not None:
            kw["decoder_input_ids"] = self.decoder_input_ids
            kw["decoder_attention_mask"] = self.decoder_attention_mask
        return kw

    def rows(self, rows: slice) -> Batch:
        """The batch of rows ``rows`` only (same padded width)."""
        def cut(t):
            return None if t is None else t[rows]

        return Batch(cut(self.input_ids), cut(self.attention_mask), cut(self.decoder_input_ids),
                     cut(self.decoder_attention_mask), cut(self.labels),
                     {k: cut(v) for k, v in self.ids.items()}, {k: cut(v) for k, v in self.masks.items()})

    def decoder_prefix(self, length: int) -> Batch:
        """The batch with its decoder's positions cut to the first ``length`` (the whole sequence of a decoder-only
        model, the target of an encoder-decoder): what a causal decoder computes there does not depend on the rest."""
        def cut(t):
            return None if t is None else t[:, :length]

        only = self.decoder_input_ids is None  # decoder-only: the input is the decoder's sequence
        return replace(self, input_ids=cut(self.input_ids) if only else self.input_ids,
                       attention_mask=cut(self.attention_mask) if only else self.attention_mask,
                       decoder_input_ids=cut(self.decoder_input_ids),
                       decoder_attention_mask=cut(self.decoder_attention_mask), labels=cut(self.labels),
                       ids={k: cut(v) if k == "decoder" else v for k, v in self.ids.items()},
                       masks={k: cut(v) if k == "decoder" else v for k, v in self.masks.items()})

    def to(self, device: torch.device) -> Batch:
        def mv(t):
            return None if t is None else t.to(device)

        return Batch(
            mv(self.input_ids), mv(self.attention_mask), mv(self.decoder_input_ids),
            mv(self.decoder_attention_mask), mv(self.labels),
            {k: mv(v) for k, v in self.ids.items()}, {k: mv(v) for k, v in self.masks.items()},
        )


def token_names(tokenizer: Any, ids: Any) -> list[str]:
    """Each id's token string: ``"<id>"`` for an id the tokenizer does not have (embedding matrices are often padded
    past the tokenizer, and a model can emit those rows), the id itself without a tokenizer."""
    ids = [int(i) for i in ids]
    if tokenizer is None:
        return [str(i) for i in ids]
    return [s if s is not None else f"<{i}>" for i, s in zip(ids, tokenizer.convert_ids_to_tokens(ids))]


def token_strings(tokenizer: Any, ids: dict[str, torch.Tensor]) -> dict[str, list[list[str]]]:
    """Per stack, each sequence's token strings (none without a tokenizer)."""
    if tokenizer is None:
        return {}
    return {s: [token_names(tokenizer, r) for r in t.tolist()] for s, t in ids.items()}


def _is_pair(x: Any) -> bool:
    return isinstance(x, tuple) and len(x) == 2


def _is_ids(x: Any) -> bool:
    return torch.is_tensor(x) or (isinstance(x, Sequence) and not isinstance(x, str) and all(isinstance(t, int) for t in x))


def _pad(rows: list[list[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if side == "left":
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
        else:
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
    return ids, mask


def _rows(model: Model, items: Sequence[Any], *, target: bool = False) -> list[list[int]]:
    """Token ids per item: strings go through the tokenizer, id lists are checked against the vocab."""
    if all(isinstance(x, str) for x in items):
        if model.tokenizer is None:
            raise InputError("this model was loaded without a tokenizer, so it takes token ids, not strings.")
        if any(not x for x in items):
            raise InputError("an input text is empty; every text needs at least one token.")
        enc = model.tokenizer(text_target=list(items)) if target else model.tokenizer(list(items))
        return [list(r) for r in enc["input_ids"]]
    rows = []
    vocab = model.vocab_size
    for x in items:
        if not _is_ids(x):
            raise InputError(
                f"cannot read input of type {type(x).__name__}: pass strings, lists of token ids or a 2-D id tensor"
                + (", or (source, target) pairs" if model.family == "encoder-decoder" else "") + "."
            )
        r = x.tolist() if torch.is_tensor(x) else list(x)
        if not r:
            raise InputError("an input has no tokens; every input needs at least one token.")
        if min(r) < 0 or max(r) >= vocab:
            bad = next(t for t in r if not 0 <= t < vocab)
            raise InputError(f"token id {bad} is outside this model's vocabulary (0..{vocab - 1}).")
        rows.append(r)
    return rows


def _check_length(model: Model, rows: list[list[int]], truncate: bool, what: str) -> list[list[int]]:
    limit = model.max_length
    if limit is None:
        return rows
    longest = max(len(r) for r in rows)
    if longest <= limit:
        return rows
    if not truncate:
        raise InputError(
            f"{what} of {longest} tokens is longer than this model's context of {limit} tokens; "
            "shorten it or pass truncate=True to keep the first tokens."
        )
    return [r[:limit] for r in rows]


def encode(model: Model, inputs: Any, *, truncate: bool = False, padding_side: str = "right") -> Batch:
    """Encode ``inputs`` for ``model``: texts, token ids, or (source, target) pairs for encoder-decoders."""
    if isinstance(inputs, str) or _is_pair(inputs):
        inputs = [inputs]
    elif torch.is_tensor(inputs):
        inputs = [inputs] if inputs.dim() == 1 else list(inputs)
    elif isinstance(inputs, Sequence) and inputs and all(isinstance(t, int) for t in inputs):
        inputs = [inputs]
    if not isinstance(inputs, Sequence) or len(inputs) == 0:
        raise InputError("no inputs were given: pass at least one text, id sequence or (source, target) pair.")
    pairs = [_is_pair(x) for x in inputs]
    if any(pairs) and not all(pairs):
        raise InputError("mixed inputs: pass either all (source, target) pairs or no pairs.")
    if all(pairs) and model.family != "encoder-decoder":
        raise InputError(f"(source, target) pairs are for encoder-decoder models; this model is {model.family}.")
    pad_id = model.pad_token_id
    sources = [x[0] for x in inputs] if all(pairs) else list(inputs)
    src = _check_length(model, _rows(model, sources), truncate, "an input")
    input_ids, attention_mask = _pad(src, pad_id, padding_side)
    stack0 = "decoder" if model.family == "decoder" else "encoder"
    batch = Batch(input_ids, attention_mask, ids={stack0: input_ids}, masks={stack0: attention_mask.bool()})
    if all(pairs):
        tgt = _check_length(model, _rows(model, [x[1] for x in inputs], target=True), truncate, "a target")
        labels, label_mask = _pad(tgt, pad_id, "right")
        start = model.decoder_start_token_id
        dec = torch.cat([torch.full((len(tgt), 1), start, dtype=torch.long), labels[:, :-1]], dim=1)
        # Position i reads [start, t_0 .. t_{i-1}] and predicts t_i, so the mask is the target's.
        dec_mask = label_mask
        batch.decoder_input_ids, batch.decoder_attention_mask = dec, dec_mask
        batch.labels = labels.masked_fill(label_mask == 0, -100)
        batch.ids["decoder"], batch.masks["decoder"] = dec, dec_mask.bool()
    return batch
