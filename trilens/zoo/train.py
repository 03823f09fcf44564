"""Train a zoo model from scratch: ``python -m trilens.zoo.train NAME [--out DIR]``.

Deterministic for a recipe and seed; writes the checkpoint, the tokenizer and a model card
(``card.json``: recipe, time, held-out accuracy per task, depth and length) atomically.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..atomic import atomic_dir
from .batches import Pools, target_count
from .evaluate import BARS, evaluate, failed_bars
from .recipes import RECIPES, Recipe
from .vocab import build_tokenizer

log = logging.getLogger(__name__)
MAX_CHECKPOINT_BYTES = 10 * 1024 * 1024


def build_model(recipe: Recipe, tok: Any) -> torch.nn.Module:
    import transformers

    cls = getattr(transformers, recipe.hf_class)
    config_cls = cls.config_class
    special = dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                   bos_token_id=tok.bos_token_id)
    if recipe.family == "encoder-decoder":
        special["decoder_start_token_id"] = tok.pad_token_id
    config = config_cls(**recipe.config, **special)
    config._attn_implementation = "eager"
    torch.manual_seed(recipe.seed)
    return cls(config)


def _lr_at(step: int, recipe: Recipe) -> float:
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    frac = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return recipe.lr * max(0.0, 1.0 - frac)  # linear decay to zero


def train(recipe: Recipe, *, device: str = "cpu", eval_every: int = 0, progress: bool = True) -> tuple[Any, Any, dict]:
    """Train one model; returns (model, tokenizer, history)."""
    torch.manual_seed(recipe.seed)
    tok = build_tokenizer(recipe.family, recipe.vocabulary)
    model = build_model(recipe, tok).to(device)
    pools = Pools(recipe, tok)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr, betas=(0.9, 0.98))
    history: dict[str, Any] = {"loss": [], "evals": []}
    model.train()
    bar = tqdm(range(recipe.steps), desc=f"train zoo:{recipe.name}", disable=not progress, mininterval=2)
    running = None
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, recipe)
        parts = pools.micro_batches(pools.batch())
        counts = [target_count(p, recipe.family) for p in parts]
        opt.zero_grad(set_to_none=True)
        loss = torch.zeros(())
        for part, count in zip(parts, counts):
            # the model's loss is a mean over the part's targets: weight it to the whole batch's mean
            part_loss = model(**{k: v.to(device) for k, v in part.items()}).loss * (count / sum(counts))
            part_loss.backward()
            loss += part_loss.detach().cpu()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip)
        opt.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 100 == 0:
            history["loss"].append((step, round(running, 4)))
            bar.set_postfix(loss=f"{running:.3f}")
        if eval_every and (step + 1) % eval_every == 0 and step + 1 < recipe.steps:
            m = evaluate(model, tok, recipe, n=200)
            model.train()
            history["evals"].append({"step": step + 1, **{k: round(v, 3) for k, v in m.items()}})
            log.info("step %d: %s", step + 1, history["evals"][-1])
    model.eval()
    return model.cpu(), tok, history


def save(model: Any, tok: Any, recipe: Recipe, history: dict, seconds: float, out: Path) -> dict:
    """Write checkpoint + tokenizer + card into ``out`` atomically; the card is measured on the saved weights."""
    with atomic_dir(out) as tmp:
        n_params = sum(p.numel() for p in model.parameters())
        if n_params * 4 > MAX_CHECKPOINT_BYTES:
            model = model.half()
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if recipe.vocabulary == "bilingual":  # the language lens reads each token's language from here
            from .tasks import word_languages

            (tmp / "languages.json").write_text(json.dumps(word_languages(), indent=0))
        import transformers

        shipped = getattr(transformers, recipe.hf_class).from_pretrained(tmp, attn_implementation="eager", dtype=torch.float32)
        metrics = evaluate(shipped, tok, recipe)
        card = {
            "name": f"zoo:{recipe.name}", "architecture": recipe.hf_class, "family": recipe.family,
            "parameters": n_params, "weights_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "recipe": recipe.to_dict(), "train_seconds": round(seconds, 1), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "metrics": {k: round(v, 4) for k, v in metrics.items()},
            "bars": {k: v for k, v in BARS.items() if k in metrics}, "failed_bars": failed_bars(metrics),
            "history": history,
        }
        (tmp / "card.json").write_text(json.dumps(card, indent=1))
    return card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trilens.zoo.train", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(RECIPES))
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the package's zoo/models/NAME)")
    parser.add_argument("--steps", type=int, default=None, help="override the recipe's steps (for experiments)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--eval-every", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field (JSON value)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    recipe = RECIPES[args.name]
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.seed is not None:
        overrides["seed"] = args.seed
    if "config" in overrides:
        overrides["config"] = {**recipe.config, **overrides["config"]}
    recipe = Recipe(**{**recipe.to_dict(), **overrides})
    out = args.out or Path(__file__).parent / "models" / recipe.name
    start = time.perf_counter()
    model, tok, history = train(recipe, device=args.device, eval_every=args.eval_every)
    card = save(model, tok, recipe, history, time.perf_counter() - start, out)
    print(json.dumps({"out": str(out), "train_seconds": card["train_seconds"], "metrics": card["metrics"],
                      "failed_bars": card["failed_bars"]}, indent=1))
    return 1 if card["failed_bars"] else 0


if __name__ == "__main__":
    sys.exit(main())
