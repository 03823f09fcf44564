"""Tokens and the model's prediction for one input: the next token (decoder-only), each ``[MASK]`` (encoders), each
target token and the greedy output (encoder-decoders), top 5 with probabilities."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .inputs import GENERATED_TARGET_TOKENS, Prepared

if TYPE_CHECKING:
    from ..model import Model

TOP_K = 5
CONTINUATION_TOKENS = 16


@dataclass
class Prediction:
    """``tokens[stack]``: (position, token, id) rows; ``rows``: one per predicted slot with its top-k; ``generated``:
    the greedy continuation or output; ``note``: how to read ``rows``."""

    tokens: dict[str, list[tuple[int, str, int]]]
    rows: list[dict]
    generated: str
    note: str


def predict(model: Model, prepared: Prepared) -> Prediction:
    """The tokens of each stack and the model's top-k predictions where this family predicts."""
    batch = model.encode(prepared.model_input)
    logits = model.run(prepared.model_input)
    tokens = {}
    for stack in model.stacks:
        ids = batch.ids[stack][0, : int(batch.masks[stack][0].sum())].tolist()
        tokens[stack] = [(p, _token(model, i), i) for p, i in enumerate(ids)]
    stack = "encoder" if model.family == "encoder" else "decoder"
    probs = logits[0, : len(tokens[stack])].float().softmax(-1)
    generated, note = "", ""
    if model.family == "decoder":
        slots = [len(tokens[stack]) - 1]
        note = "the next token after the text"
        generated = model.generate([prepared.model_input], max_new_tokens=CONTINUATION_TOKENS).texts[0]
    elif model.family == "encoder":
        mask_id = model.tokenizer.mask_token_id if model.tokenizer is not None else None
        slots = [p for p, _, i in tokens[stack] if i == mask_id]
        note = "each [MASK]" if slots else "no [MASK] in the text: the model's reconstruction of every position"
        slots = slots or [p for p, _, _ in tokens[stack]]
    else:
        slots = [p for p, _, _ in tokens[stack]]
        note = "each target token, teacher-forced (position i reads the target up to i - 1)"
        generated = prepared.target if prepared.target_generated else model.generate(
            [prepared.model_input[0]], max_new_tokens=GENERATED_TARGET_TOKENS).texts[0]  # generated once, in prepare
    rows = []
    top = torch.topk(probs[slots], min(TOP_K, probs.shape[-1]))
    labels = [t for _, t, _ in tokens[stack]]
    for slot, ids, ps in zip(slots, top.indices.tolist(), top.values.tolist()):
        row = {"position": slot, "token": labels[slot]}
        if batch.labels is not None and int(batch.labels[0, slot]) >= 0:
            row["target"] = _token(model, int(batch.labels[0, slot]))
        row.update({f"top {k + 1}": f"{_token(model, i)} ({p:.3f})" for k, (i, p) in enumerate(zip(ids, ps))})
        rows.append(row)
    return Prediction(tokens, rows, generated, note)


def _token(model: Model, i: int) -> str:
    tok = model.tokenizer.convert_ids_to_tokens(int(i)) if model.tokenizer is not None else None
    return tok if tok is not None else f"<{i}>"
