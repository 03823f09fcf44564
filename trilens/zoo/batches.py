"""Tokenised training pools and padded batches for each family's format."""

from __future__ import annotations

import random
from typing import Any

import torch

from . import tasks as T
from .formats import lm_item, mlm_item, random_mask, seq2seq_item
from .recipes import Recipe


def draw(recipe: Recipe, task: str, n: int, split: str, seed: int) -> list[T.Example]:
    """``n`` examples of ``task`` (per depth for logic) from the recipe's settings."""
    if task == "logic":
        return T.logic(n, seed=seed, depths=recipe.logic_depths, split=split)
    if task == "reverse":
        return T.reverse(n, seed=seed, lengths=recipe.reverse_lengths, split=split)
    return T.TASKS[task](n, seed=seed, split=split)


class Pools:
    """Pre-tokenised training items per task, sampled into batches with a seeded RNG."""

    def __init__(self, recipe: Recipe, tokenizer: Any):
        self.recipe, self.tok = recipe, tokenizer
        self.rng = random.Random(recipe.seed)
        self.special = set(tokenizer.all_special_ids)
        self.items: dict[str, list[Any]] = {}
        for task in recipe.tasks:
            exs = draw(recipe, task, recipe.pool, "train", recipe.seed)
            self.items[task] = [self._encode(ex) for ex in exs]

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"] if text else []

    def _encode(self, ex: T.Example) -> Any:
        fam = self.recipe.family
        if fam == "decoder":
            item = lm_item(ex)
            p, a = self._ids(item.prompt), self._ids(item.answer) + [self.tok.eos_token_id]
            return p + a, ([-100] * len(p) if not item.loss_on_prompt else p) + a
        if fam == "encoder":
            item = mlm_item(ex)
            ids = self.tok(item.text)["input_ids"]
            ans = self.tok.convert_tokens_to_ids(item.answer) if item.answer else None
            return ids, ans, ex.task
        src, tgt = seq2seq_item(ex)
        return self.tok(src)["input_ids"], self.tok(text_target=tgt)["input_ids"]

    def batch(self) -> dict[str, torch.Tensor]:
        tasks = list(self.recipe.tasks)
        weights = [self.recipe.tasks[t] for t in tasks]
        picks = self.rng.choices(tasks, weights=weights, k=self.recipe.batch_size)
        rows = [self.rng.choice(self.items[t]) for t in picks]
        return getattr(self, f"_batch_{self.recipe.family.replace('-', '_')}")(rows)

    def micro_batches(self, batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """``batch`` split into up to ``recipe.length_groups`` groups of similar length, padding trimmed.

        The groups hold exactly the batch's rows, so summing each group's token-weighted loss gives
        the whole batch's gradient; only the padded positions (no loss, masked out) are not computed.
        """
        return split_by_length(batch, self.recipe.length_groups, seq2seq=self.recipe.family == "encoder-decoder")

    def _pad(self, rows: list[list[int]], value: int) -> torch.Tensor:
        width = max(len(r) for r in rows)
        return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)

    def _batch_decoder(self, rows):
        # GPT-2 shifts labels itself; the first position never has a target.
        return {"input_ids": self._pad([r[0] for r in rows], self.tok.pad_token_id),
                "attention_mask": self._pad([[1] * len(r[0]) for r in rows], 0),
                "labels": self._pad([r[1] for r in rows], -100)}

    def _batch_encoder(self, rows):
        inputs, labels = [], []
        mask_id = self.tok.mask_token_id
        for ids, ans, task in rows:
            # Formulas are not randomly masked: a masked operand would make the answer unknowable.
            rate = 0.0 if task == "logic" else 0.15
            inp, lab = random_mask(ids, self.special, mask_id, len(self.tok), self.rng, rate)
            for i, t in enumerate(ids):
                if t == mask_id:  # the task's own mask: always predict the answer there
                    inp[i], lab[i] = mask_id, ans
            inputs.append(inp)
            labels.append(lab)
        ids = self._pad(inputs, self.tok.pad_token_id)
        return {"input_ids": ids, "attention_mask": self._pad([[1] * len(r) for r in inputs], 0), "labels": self._pad(labels, -100)}

    def _batch_encoder_decoder(self, rows):
        src = [r[0] for r in rows]
        return {"input_ids": self._pad(src, self.tok.pad_token_id),
                "attention_mask": self._pad([[1] * len(r) for r in src], 0),
                "labels": self._pad([r[1] for r in rows], -100)}


def split_by_length(batch: dict[str, torch.Tensor], max_groups: int, *, seq2seq: bool = False,
                    call_cost: int = 256) -> list[dict[str, torch.Tensor]]:
    """Rows sorted by length and cut into at most ``max_groups`` contiguous groups that minimise
    the padded tokens computed plus ``call_cost`` tokens' worth of overhead per forward call.

    Right padding is assumed (as the zoo's batches have): trimming a group's trailing columns
    removes only padding. For seq2seq batches the labels (decoder side) are trimmed separately.
    """
    if max_groups <= 1:
        return [batch]
    src = batch["attention_mask"].sum(1)
    tgt = None
    if seq2seq:
        has_target = (batch["labels"] != -100).int()
        tgt = has_target.shape[1] - has_target.flip(1).argmax(1)  # last target position + 1
    total = src + (tgt if tgt is not None else 0)
    order = torch.argsort(total, stable=True)
    lengths = total[order].tolist()
    n = len(lengths)
    # best[g][j]: cheapest cost of the first j sorted rows in g groups; the last row of a group is its widest.
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(max_groups + 1)]
    cut = [[0] * (n + 1) for _ in range(max_groups + 1)]
    best[0][0] = 0.0
    for g in range(1, max_groups + 1):
        for j in range(1, n + 1):
            for i in range(j):
                cost = best[g - 1][i] + (j - i) * lengths[j - 1] + call_cost
                if cost < best[g][j]:
                    best[g][j], cut[g][j] = cost, i
    groups_used = min(range(1, max_groups + 1), key=lambda g: best[g][n])
    bounds, j = [], n
    for g in range(groups_used, 0, -1):
        bounds.append((cut[g][j], j))
        j = cut[g][j]
    parts = []
    for i, j in reversed(bounds):
        rows = order[i:j]
        width = int(src[rows].max())
        part = {k: v[rows] for k, v in batch.items()}
        for k in ("input_ids", "attention_mask"):
            part[k] = part[k][:, :width]
        if tgt is None:
            part["labels"] = part["labels"][:, :width]
        else:
            part["labels"] = part["labels"][:, :int(tgt[rows].max())]
        parts.append({k: v.contiguous() for k, v in part.items()})
    return parts


def target_count(part: dict[str, torch.Tensor], family: str) -> int:
    """Tokens the model's mean loss averages over (GPT-2 shifts labels, so its first column never counts)."""
    labels = part["labels"][:, 1:] if family == "decoder" else part["labels"]
    return int((labels != -100).sum())
