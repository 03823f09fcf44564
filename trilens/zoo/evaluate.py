"""Held-out accuracy of a zoo model on its tasks: per logic depth, per reverse length, overall."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

from . import tasks as T
from .batches import draw
from .formats import contrast, lm_item, mlm_item, seq2seq_item
from .recipes import Recipe

# Quality bars from the zoo issue: a model that misses one is not shipped.
BARS = {"logic_depth_1": 0.95, "logic_depth_2": 0.90, "logic_deepest": 0.75,
        "reverse_up_to_12": 0.95, "names": 0.99, "agreement": 0.95, "facts_seen": 0.95}


def _pad_left(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


@torch.inference_mode()
def _two_way_scores(model: Any, tok: Any, family: str, exs: list[T.Example]) -> list[bool]:
    """Whether the correct answer's logit beats the wrong one's, per example."""
    ok: list[bool] = []
    dev = next(model.parameters()).device
    for start in range(0, len(exs), 128):
        chunk = exs[start:start + 128]
        pairs = [tok.convert_tokens_to_ids(list(contrast(ex))) for ex in chunk]
        if family == "decoder":
            ids, mask = _pad_left([tok(lm_item(ex).prompt, add_special_tokens=False)["input_ids"] for ex in chunk], tok.pad_token_id)
            pos = torch.full((len(chunk),), ids.shape[1] - 1)
            logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                           position_ids=(mask.cumsum(1) - 1).clamp_min(0).to(dev)).logits
        elif family == "encoder":
            enc = tok([mlm_item(ex).text for ex in chunk], padding=True, return_tensors="pt")
            pos = (enc["input_ids"] == tok.mask_token_id).int().argmax(1)
            logits = model(**enc.to(dev)).logits
        else:
            enc = tok([seq2seq_item(ex)[0] for ex in chunk], padding=True, return_tensors="pt")
            start_ids = torch.full((len(chunk), 1), model.config.decoder_start_token_id)
            logits = model(**enc.to(dev), decoder_input_ids=start_ids.to(dev)).logits
            pos = torch.zeros(len(chunk), dtype=torch.long)
        at = logits[torch.arange(len(chunk), device=dev), pos.to(dev)].cpu()
        ok += [bool(at[i, a] > at[i, b]) for i, (a, b) in enumerate(pairs)]
    return ok


@torch.inference_mode()
def first_token_hits(model: Any, tok: Any, family: str, prompts: list[str], answers: list[str]) -> list[bool]:
    """Whether the model's top next token (decoder) or first target token (encoder-decoder) is the answer word."""
    ok: list[bool] = []
    dev = next(model.parameters()).device
    for start in range(0, len(prompts), 256):
        chunk = prompts[start:start + 256]
        if family == "decoder":
            ids, mask = _pad_left([tok(p, add_special_tokens=False)["input_ids"] for p in chunk], tok.pad_token_id)
            logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                           position_ids=(mask.cumsum(1) - 1).clamp_min(0).to(dev)).logits[:, -1]
        else:
            enc = tok(chunk, padding=True, return_tensors="pt")
            start_ids = torch.full((len(chunk), 1), model.config.decoder_start_token_id)
            logits = model(**enc.to(dev), decoder_input_ids=start_ids.to(dev)).logits[:, 0]
        want = torch.tensor(tok.convert_tokens_to_ids(answers[start:start + 256]))
        ok += (logits.argmax(-1).cpu() == want).tolist()
    return ok


def _fact_metrics(model: Any, tok: Any, family: str, exs: list[T.Example]) -> dict[str, float]:
    """Accuracy per language and per split ("both", "same", "other"), and consistency between the languages."""
    hits = first_token_hits(model, tok, family, [ex.text for ex in exs], [ex.target for ex in exs])
    metrics: dict[str, float] = {}
    for lang in T.LANGUAGES:
        for split in ("both", "same", "other"):
            v = [h for ex, h in zip(exs, hits) if ex.meta["language"] == lang and ex.meta["split"] == split]
            metrics[f"facts_{lang}_{split}"] = sum(v) / len(v)
    seen = [h for ex, h in zip(exs, hits) if ex.meta["split"] != "other"]
    other = [h for ex, h in zip(exs, hits) if ex.meta["split"] == "other"]
    metrics["facts_seen"], metrics["facts_transfer"] = sum(seen) / len(seen), sum(other) / len(other)
    from ..lens.languages import consistency

    for group in ("both", "one"):  # facts stated in both languages; facts stated in one only
        rows = [(h, ex.meta["fact"], ex.meta["language"]) for ex, h in zip(exs, hits)
                if (ex.meta["seen"] == "both") == (group == "both")]
        (value,) = consistency(*zip(*rows)).values()
        metrics[f"facts_consistency_{group}"] = value
    return metrics


@torch.inference_mode()
def _reverse_exact(model: Any, tok: Any, family: str, exs: list[T.Example]) -> list[bool]:
    ok: list[bool] = []
    dev = next(model.parameters()).device
    for start in range(0, len(exs), 128):
        chunk = exs[start:start + 128]
        longest = max(ex.meta["length"] for ex in chunk)
        if family == "decoder":
            ids, mask = _pad_left([tok(lm_item(ex).prompt, add_special_tokens=False)["input_ids"] for ex in chunk], tok.pad_token_id)
            out = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), max_new_tokens=longest + 1, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)[:, ids.shape[1]:]
        else:
            enc = tok([seq2seq_item(ex)[0] for ex in chunk], padding=True, return_tensors="pt")
            out = model.generate(**enc.to(dev), max_new_tokens=longest + 2, do_sample=False)
        texts = tok.batch_decode(out.cpu(), skip_special_tokens=True)
        ok += [" ".join(t.split()) == ex.target for t, ex in zip(texts, chunk)]
    return ok


def evaluate(model: Any, tok: Any, recipe: Recipe, *, n: int | None = None, seed: int = 1) -> dict[str, Any]:
    """Accuracy on held-out data for every task the recipe trains: a flat dict of metrics."""
    n = n or recipe.eval_n
    model.eval()
    metrics: dict[str, Any] = {}
    for task in recipe.tasks:
        if task == "reverse":
            exs = [ex for k in range(recipe.reverse_lengths[0], recipe.reverse_lengths[1] + 1)
                   for ex in T.reverse(max(n // 4, 25), seed=seed, lengths=(k, k), split="test")]
            hits = _reverse_exact(model, tok, recipe.family, exs)
            by_len = defaultdict(list)
            for ex, h in zip(exs, hits):
                by_len[ex.meta["length"]].append(h)
            for k, v in sorted(by_len.items()):
                metrics[f"reverse_length_{k}"] = sum(v) / len(v)
            short = [h for ex, h in zip(exs, hits) if ex.meta["length"] <= 12]
            metrics["reverse_up_to_12"] = sum(short) / len(short)
            continue
        if task == "translate":  # a training aid for the facts; its sentences are the facts' own
            continue
        if task == "facts":  # every fact in both languages, from the knowledge base the model was trained on
            metrics.update(_fact_metrics(model, tok, recipe.family, T.facts(0, seed=recipe.seed, split="test")))
            continue
        exs = draw(recipe, task, n, "test", seed)
        if task == "names":
            exs = [ex for ex in exs if ex.label is not None]
        hits = _two_way_scores(model, tok, recipe.family, exs)
        metrics[task] = sum(hits) / len(hits)
        if task == "logic":
            for depth in recipe.logic_depths:
                v = [h for ex, h in zip(exs, hits) if ex.meta["depth"] == depth]
                metrics[f"logic_depth_{depth}"] = sum(v) / len(v)
            metrics["logic_deepest"] = metrics[f"logic_depth_{max(recipe.logic_depths)}"]
        if task == "agreement":
            v = [h for ex, h in zip(exs, hits) if ex.meta["distractors"] > 0]
            metrics["agreement_with_distractors"] = sum(v) / len(v)
            v = [h for ex, h in zip(exs, hits) if ex.meta["attractor"]]
            metrics["agreement_with_attractor"] = sum(v) / len(v)
    return metrics


def failed_bars(metrics: dict[str, float]) -> list[str]:
    """The quality bars these metrics miss (only bars whose metric exists)."""
    return [f"{k}: {metrics[k]:.3f} < {bar}" for k, bar in BARS.items() if k in metrics and metrics[k] < bar]
