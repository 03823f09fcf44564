"""How each zoo model sees each task: LM strings, masked-LM inputs, or source/target pairs."""

from __future__ import annotations

import random
from dataclasses import dataclass

from .tasks import TRANSLATE_SEP, Example

# Separators that mark the task in LM and seq2seq formats.
LOGIC_SEP, REVERSE_SEP = "=", ">"


@dataclass
class LMItem:
    """A decoder-only training sequence: ``prompt`` then ``answer``; loss on the answer (or all)."""

    prompt: str
    answer: str
    loss_on_prompt: bool


def lm_item(ex: Example) -> LMItem:
    if ex.task == "logic":
        return LMItem(f"{ex.text} {LOGIC_SEP}", ex.target, False)
    if ex.task == "reverse":
        return LMItem(f"{ex.text} {REVERSE_SEP}", ex.target, False)
    if ex.task == "names":
        if ex.label is None:
            words = ex.meta["full"].split()
            return LMItem(words[0], " ".join(words[1:]), True)
        rest = ex.meta["full"].split()[ex.meta["pronoun_index"]:]
        return LMItem(ex.text, " ".join(rest), True)
    if ex.task == "agreement":
        return LMItem(ex.text, f"{ex.target} {ex.meta['adjective']}", True)
    if ex.task == "facts":
        return LMItem(ex.text, ex.target, False)
    if ex.task == "translate":
        return LMItem(f"{ex.text} {TRANSLATE_SEP}", ex.target, False)
    raise ValueError(f"unknown task {ex.task!r}")


@dataclass
class MLMItem:
    """An encoder training input with one ``[MASK]`` to predict (``answer``), or none (neutral)."""

    text: str
    answer: str | None


def mlm_item(ex: Example) -> MLMItem:
    if ex.task == "logic":
        return MLMItem(f"{ex.text} {LOGIC_SEP} [MASK]", ex.target)
    if ex.task == "names":
        if ex.label is None:
            return MLMItem(ex.meta["full"], None)
        words = ex.meta["full"].split()
        words[ex.meta["pronoun_index"]] = "[MASK]"
        return MLMItem(" ".join(words), ex.target)
    if ex.task == "agreement":
        return MLMItem(f"{ex.text} [MASK] {ex.meta['adjective']}", ex.target)
    raise ValueError(f"task {ex.task!r} has no masked-LM format")


def seq2seq_item(ex: Example) -> tuple[str, str]:
    if ex.task == "logic":
        return f"{ex.text} {LOGIC_SEP}", ex.target
    if ex.task == "reverse":
        return f"{ex.text} {REVERSE_SEP}", ex.target
    if ex.task == "facts":
        return ex.text, ex.target
    if ex.task == "translate":
        return f"{ex.text} {TRANSLATE_SEP}", ex.target
    raise ValueError(f"task {ex.task!r} has no sequence-to-sequence format")


def contrast(ex: Example) -> tuple[str, str]:
    """(correct, wrong) answer words for two-way tasks, scored by comparing their logits."""
    if ex.task == "logic":
        return ex.target, "F" if ex.target == "T" else "T"
    if ex.task == "names":
        return ex.target, "he" if ex.target == "she" else "she"
    if ex.task == "agreement":
        from .tasks import VERBS

        pair = next(p for p in VERBS if ex.target in p)
        return ex.target, pair[1] if ex.target == pair[0] else pair[0]
    raise ValueError(f"task {ex.task!r} is not a two-way task")


def random_mask(ids: list[int], special: set[int], mask_id: int, vocab: int, rng: random.Random,
                rate: float = 0.15) -> tuple[list[int], list[int]]:
    """BERT-style random masking of non-special tokens -> (inputs, labels with -100 elsewhere)."""
    inputs, labels = list(ids), [-100] * len(ids)
    for i, t in enumerate(ids):
        if t in special or rng.random() >= rate:
            continue
        labels[i] = t
        r = rng.random()
        inputs[i] = mask_id if r < 0.8 else (rng.randrange(vocab) if r < 0.9 else t)
    return inputs, labels
