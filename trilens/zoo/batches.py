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
