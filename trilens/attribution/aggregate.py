"""From raw attributions ``[input, step, position(, d)]`` to one score per token (or word): over the hidden
dimension by L2 norm ("vnorm", Inseq's default) or sum, sub-words summed into words, L1 normalisation per step."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import InputError

HIDDEN = ("l2", "sum")
NORMALISE = (None, "l1")
_WORD_START = ("Ġ", "▁", " ")  # byte-level BPE and sentencepiece mark the first piece of a word


def check(hidden: str, normalise: str | None) -> None:
    if hidden not in HIDDEN:
        raise InputError(f"hidden must be one of {', '.join(HIDDEN)}, not {hidden!r}.")
    if normalise not in NORMALISE:
        raise InputError(f"normalise must be None or 'l1', not {normalise!r}.")


def over_hidden(raw: torch.Tensor, hidden: str, has_hidden: bool) -> torch.Tensor:
    """``[..., position]`` token scores: the L2 norm or the sum over the last (hidden) axis, if there is one."""
    if not has_hidden:
        return raw
    return raw.norm(dim=-1) if hidden == "l2" else raw.sum(-1)


def _special(token: str) -> bool:
    return len(token) > 2 and (token[0], token[-1]) in (("<", ">"), ("[", "]"))


def word_groups(tokens: Sequence[str]) -> list[list[int]]:
    """Token indices grouped into words, from the tokenizer's own marks: WordPiece continues a word with ``##``;
    byte-level BPE and sentencepiece start one with ``Ġ`` / ``▁``. Special tokens are words of their own."""
    wordpiece = any(t.startswith("##") for t in tokens)
    groups: list[list[int]] = []
    for i, t in enumerate(tokens):
        if wordpiece:
            starts = not t.startswith("##")
        else:
            starts = t.startswith(_WORD_START) or not any(tokens[j].startswith(_WORD_START) for j in range(len(tokens)))
        if not groups or starts or _special(t) or _special(tokens[i - 1]):
            groups.append([i])
        else:
            groups[-1].append(i)
    return groups


def word_text(tokens: Sequence[str], group: Sequence[int]) -> str:
    """The word a group of tokens spells (markers removed)."""
    parts = [tokens[i] for i in group]
    return parts[0] + "".join(p.removeprefix("##") for p in parts[1:])


def sum_groups(scores: torch.Tensor, groups: list[list[int]]) -> torch.Tensor:
    """``[..., word]`` sums of ``scores [..., token]`` over each group's tokens (exact: the same additions)."""
    index = torch.tensor([w for w, g in enumerate(groups) for _ in g])
    order = torch.tensor([i for g in groups for i in g])
    out = scores.new_zeros((*scores.shape[:-1], len(groups)))
    return out.index_add_(-1, index, scores.index_select(-1, order))


def l1_normalise(parts: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each ``[..., step, token]`` divided by the step's L1 norm over all parts together (source and target)."""
    total = sum(p.abs().sum(-1) for p in parts)
    total = torch.where(total > 0, total, torch.ones_like(total))
    return [p / total[..., None] for p in parts]
