"""The teacher-forced batch behind per-step analyses: a source, the tokens generated (or given) after it, and for each
generation step the position whose output predicts it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError

if TYPE_CHECKING:
    from ..model import Model


@dataclass
class StepInputs:
    """Per input: the source (a decoder-only model's prompt, an encoder-decoder's encoder input) and ``T`` steps.

    ``positions[b, t]`` is the position in the decoder (``stack``) whose output predicts step ``t + 1``'s token: the
    last prompt token predicts step 1 in a decoder-only sequence (p = N + t - 2 for 1-based t), the start token does in an
    encoder-decoder's decoder. ``rows`` holds each input unpadded, for passes over one input at a time."""

    rows: list[Any]
    source_stack: str
    source_lengths: torch.Tensor  # [B]
    positions: torch.Tensor  # [B, T]
    valid: torch.Tensor  # [B, T]
    step_ids: torch.Tensor  # [B, T], -1 where not valid
    generated: bool

    stack = "decoder"

    @property
    def n_steps(self) -> int:
        return self.positions.shape[1]


def _listed(inputs: Any) -> list[Any]:
    if isinstance(inputs, (str, tuple)):
        return [inputs]
    if not isinstance(inputs, Sequence) or not inputs:
        raise InputError("no inputs were given: pass at least one text (or a list of texts).")
    return list(inputs)


def _continuation(model: Model, prompt: list[int], text: str) -> list[int]:
    """The ids of ``text`` as it continues ``prompt`` (a space between them unless ``text`` starts with one)."""
    tok = model.tokenizer
    joined = tok.decode(prompt, skip_special_tokens=False)
    sep = "" if text[:1].isspace() else " "
    full = tok(joined + sep + text, add_special_tokens=False)["input_ids"]
    if full[: len(prompt)] == prompt and len(full) > len(prompt):
        return full[len(prompt):]
    return tok(sep + text, add_special_tokens=False)["input_ids"]


def step_inputs(model: Model, inputs: Any, targets: Sequence[str] | None = None, *, max_new_tokens: int = 20,
                truncate: bool = False, **generate_kwargs: Any) -> StepInputs:
    """The teacher-forced batch for ``inputs`` (prompts or sources; ``(source, target)`` pairs for encoder-decoders)
    followed by ``targets`` (one text or list of token ids per input) or, without targets, by the model's own greedy generation."""
    if model.family == "encoder":
        raise InputError("per-step attention needs generation steps: encoder-only models do not generate. Use "
                         "trilens.attention.rollout or relevancy for an encoder's masked position.")
    items = _listed(inputs)
    if all(isinstance(x, tuple) and len(x) == 2 for x in items):
        if model.family != "encoder-decoder":
            raise InputError(f"(source, target) pairs are for encoder-decoder models; this model is {model.family}: "
                             "pass prompts and targets=[...].")
        if targets is not None:
            raise InputError("pass either (source, target) pairs or targets=, not both.")
        items, targets = [x[0] for x in items], [x[1] for x in items]
    if targets is not None:
        targets = [targets] if isinstance(targets, str) else list(targets)
        if len(targets) != len(items):
            raise InputError(f"{len(items)} inputs but {len(targets)} targets: give one target per input.")
        if any(not (t.strip() if isinstance(t, str) else len(t)) for t in targets):
            raise InputError("a target is empty: every target needs at least one token (or leave targets out to generate).")
    source = model.encode(items, truncate=truncate)
    mask = source.attention_mask.bool()
    prompts = [source.input_ids[b][mask[b]].tolist() for b in range(len(items))]
    if targets is None:
        gen = model.generate(items, max_new_tokens=max_new_tokens, truncate=truncate, **generate_kwargs)
        steps = [gen.generated_ids[b][gen.live[b]].tolist() for b in range(len(items))]
    elif model.family == "decoder":  # texts continue their prompt; token ids are taken as they are
        steps = [_continuation(model, p, t) if isinstance(t, str) else [int(i) for i in t] for p, t in zip(prompts, targets)]
    else:
        labels = model.encode(list(zip(items, targets))).labels
        steps = [row[row >= 0].tolist() for row in labels]
    if any(not s for s in steps):
        raise InputError("an input has no generation steps (the target tokenizes to nothing).")
    lengths = torch.tensor([len(p) for p in prompts])
    counts = torch.tensor([len(s) for s in steps])
    t = torch.arange(int(counts.max()))[None, :]
    valid = t < counts[:, None]
    step_ids = torch.full(valid.shape, -1, dtype=torch.long)
    for b, s in enumerate(steps):
        step_ids[b, : len(s)] = torch.tensor(s)
    if model.family == "decoder":
        rows: list[Any] = [p + s for p, s in zip(prompts, steps)]
        positions = lengths[:, None] - 1 + t
    else:
        rows = [(p, s) for p, s in zip(prompts, steps)]
        positions = t.expand(len(rows), -1)
    model.encode(rows)  # a source and its steps too long for the model fail here, never cut
    return StepInputs(rows=rows, source_stack="decoder" if model.family == "decoder" else "encoder",
                      source_lengths=lengths, positions=torch.where(valid, positions, 0), valid=valid,
                      step_ids=step_ids, generated=targets is None)
