"""Logit lens on zoo:gpt and zoo:bert: the layer at which the answer becomes top-1, by task and depth;
logit-lens vs tuned-lens KL to the final distribution per layer, on held-out text.

Questions (nostalgebraist 2020; Belrose et al. 2023, "Eliciting latent predictions with the tuned lens"):
does the answer appear in the residual stream before the last layer, later for harder inputs, and does
a learned affine translator per layer read it out better than the model's own unembedding?
"""

from __future__ import annotations

import statistics
from itertools import pairwise
from typing import Any

import torch

import trilens
from trilens.lens import TunedLens, lens_at_answers, logit_lens, run_lens
from trilens.study import StudyContext
from trilens.viz import curves
from trilens.zoo import tasks as T
from trilens.lens.result import settled_layer
from trilens.zoo.formats import contrast, lm_item, mlm_item
from trilens.zoo.recipes import RECIPES


def _prompt(model: Any, ex: T.Example) -> str:
    """What the model reads, ending in (decoder) or containing (encoder) the answer's slot."""
    return lm_item(ex).prompt if model.family == "decoder" else mlm_item(ex).text


def _full_text(model: Any, ex: T.Example) -> str:
    """A whole training-format text, for fitting and evaluating the tuned lens."""
    if model.family == "decoder":
        item = lm_item(ex)
        return f"{item.prompt} {item.answer}"
    return mlm_item(ex).text


def example_sets(model_name: str, cfg: dict[str, Any], split: str) -> dict[str, list[T.Example]]:
    """Held-out examples per (task, depth) group of the tasks this zoo model was trained on."""
    recipe = RECIPES[model_name.removeprefix("zoo:")]
    groups: dict[str, list[T.Example]] = {}
    if "logic" in recipe.tasks:
        exs = T.logic(cfg["n_per_depth"], seed=cfg["seed"], depths=recipe.logic_depths, split=split)
        for d in recipe.logic_depths:
            groups[f"logic depth {d}"] = [ex for ex in exs if ex.meta["depth"] == d]
    if "names" in recipe.tasks:
        groups["names"] = [ex for ex in T.names(cfg["n_names"], seed=cfg["seed"], split=split) if ex.label is not None]
    if "agreement" in recipe.tasks:
        groups["agreement"] = T.agreement(cfg["n_agreement"], seed=cfg["seed"], split=split)
    return groups


def answer_layers(model: Any, exs: list[T.Example], batch_size: int) -> dict[str, torch.Tensor]:
    """Per layer and example: whether the answer is top-1, whether it beats its alternative (T vs F,
    she vs he, has vs have), its probability; and the layers from which each holds to the end."""
    parts: list[dict[str, torch.Tensor]] = []
    for start in range(0, len(exs), batch_size):
        chunk = exs[start:start + batch_size]
        texts = [_prompt(model, ex) for ex in chunk]
        right = lens_at_answers(model, texts, [contrast(ex)[0] for ex in chunk])
        wrong = lens_at_answers(model, texts, [contrast(ex)[1] for ex in chunk])
        beats = right["cross_entropy"] < wrong["cross_entropy"]
        parts.append({"top1": right["target_rank"] == 0, "beats": beats, "prob": (-right["cross_entropy"]).exp(),
                      "settled_top1": right["settled"], "settled_beats": settled_layer(beats)})
    return {k: torch.cat([p[k] for p in parts], dim=-1) for k in parts[0]}


def run(ctx: StudyContext) -> None:
    cfg = ctx.config
    readouts: dict[str, dict[str, Any]] = {}
    for name in cfg["models"]:
        model = trilens.load(name)
        stack = model.stacks[0]
        n_layers = model.n_layers[stack]
        ctx.say(f"## {name}: logit lens on the {stack} stack ({n_layers} blocks; layer 0 = embeddings)")
        ctx.say("")
        per_group: dict[str, Any] = {}
        beats: dict[str, list[float]] = {}
        rows_top, rows_beats = [], []
        for group, exs in example_sets(name, cfg, "test").items():
            r = answer_layers(model, exs, cfg["batch_size"])
            entry: dict[str, Any] = {"n": len(exs)}
            for key, label in (("top1", "top1"), ("beats", "beats_alternative")):
                curve = r[key].float().mean(1).tolist()
                settled = [int(v) for v in r[f"settled_{key}"] if v >= 0]
                entry[f"{label}_by_layer"] = [round(v, 4) for v in curve]
                entry[f"{label}_settled_median"] = statistics.median(settled) if settled else None
                entry[f"{label}_settled_mean"] = round(statistics.fmean(settled), 3) if settled else None
                (rows_top if key == "top1" else rows_beats).append((group, curve, entry[f"{label}_settled_median"]))
            entry["answer_prob_by_layer"] = [round(v, 4) for v in r["prob"].mean(1).tolist()]
            per_group[group] = entry
            beats[group] = entry["beats_alternative_by_layer"]
        for title, rows in (("answer is the layer's top-1 token", rows_top),
                            ("answer beats its alternative (T/F, she/he, verb forms)", rows_beats)):
            ctx.say(f"  {title}, per layer; 'from' = median layer from which it holds to the last layer")
            ctx.say(f"  {'task':<16}" + "".join(f"{k:>6}" for k in range(n_layers + 1)) + f"{'from':>7}")
            for group, curve, median in rows:
                ctx.say(f"  {group:<16}" + "".join(f"{v:>6.2f}" for v in curve) + f"{str(median):>7}")
            ctx.say("")
        fig = curves(list(range(n_layers + 1)), beats, y_title="answer beats alternative",
                     title=f"Logit lens on {name}: share of examples whose answer beats its alternative")
        fig.update_yaxes(range=[0, 1.02])
        ctx.figure(f"{name.removeprefix('zoo:')}_answer_by_layer", fig)

        # -- tuned vs logit lens, KL to the final distribution on held-out text ------------------------
        train = [_full_text(model, ex) for exs in example_sets(name, {**cfg, **_scaled(cfg, "tuned_train_texts")}, "train").values()
                 for ex in exs]
        held = [_full_text(model, ex) for exs in example_sets(name, {**cfg, **_scaled(cfg, "tuned_eval_texts")}, "test").values()
                for ex in exs]
        tuned = TunedLens.from_model(model, stack)
        losses = tuned.fit(model, train, steps=cfg["tuned_steps"], batch_size=cfg["tuned_batch_size"], seed=cfg["seed"],
                           progress=ctx.progress)
        kl_logit, kl_tuned = _held_out_kl(model, held, None, cfg["batch_size"]), _held_out_kl(model, held, tuned, cfg["batch_size"])
        per_group_kl = {"logit": [round(v, 4) for v in kl_logit], "tuned": [round(v, 4) for v in kl_tuned],
                        "train_texts": len(train), "held_out_texts": len(held), "tuned_final_loss": round(losses[-1], 4)}
        ctx.metric(name, {"answer_by_group": per_group, "kl_by_layer": per_group_kl})
        ctx.say("")
        ctx.say(f"  KL(final || layer) in nats on {len(held)} held-out texts, per layer:")
        ctx.say("    logit lens " + " ".join(f"{v:6.3f}" for v in kl_logit))
        ctx.say("    tuned lens " + " ".join(f"{v:6.3f}" for v in kl_tuned))
        below = sum(t <= lo + 1e-6 for t, lo in zip(kl_tuned, kl_logit))
        ctx.say(f"    tuned <= logit at {below} of {len(kl_logit)} layers")
        ctx.say("")
        kfig = curves(list(range(n_layers + 1)), {"logit lens": kl_logit, "tuned lens": kl_tuned}, y_title="nats",
                      title=f"{name}: KL(final || lens) per layer, held-out text", log_y=True)
        ctx.figure(f"{name.removeprefix('zoo:')}_kl_logit_vs_tuned", kfig)
        readouts[name] = {"n_layers": n_layers, "kl_logit": kl_logit, "kl_tuned": kl_tuned, "tuned_below": below,
                          "settled": {g: e["beats_alternative_settled_median"] for g, e in per_group.items()}}
    _claims(ctx, readouts)


def _claims(ctx: StudyContext, readouts: dict[str, dict[str, Any]]) -> None:
    """The founding papers' claims set against this run's numbers, over all models."""
    short = {name: name.removeprefix("zoo:") for name in readouts}
    logit_paper, tuned_paper = "nostalgebraist 2020 (logit lens)", "Belrose et al. 2023 (tuned lens)"

    falls = {name: sum(b <= a + 1e-6 for a, b in pairwise(r["kl_logit"])) for name, r in readouts.items()}
    steps = {name: len(r["kl_logit"]) - 1 for name, r in readouts.items()}
    _on_every_model(
        ctx, "Read through the model's own unembedding, each layer's prediction gets closer to the final output layer "
             "by layer: the logit lens's KL to the final distribution falls with depth.", logit_paper,
        "logit-lens KL(final || layer) falls at",
        {n: (falls[n] == steps[n], f"{falls[n]} of {steps[n]} layer steps on {short[n]} ({r['kl_logit'][0]:.2f} nats "
                                   f"at the embeddings, {r['kl_logit'][-2]:.2f} one layer before the last)")
         for n, r in readouts.items()}, "reproduced if it falls at every step on every model")

    early = sum(k is not None and k < r["n_layers"] for r in readouts.values() for k in r["settled"].values())
    groups = sum(len(r["settled"]) for r in readouts.values())
    ctx.claim("The model's answer is already readable from the residual stream at intermediate layers, before the "
              "last layer.",
              paper=logit_paper,
              measured=f"answer stays ahead of its alternative from before the last layer in {early} of {groups} task "
                       "groups (median 'from' layer, by task: " + "; ".join(
                           f"{short[n]} " + "/".join("none" if k is None else f"{k:g}" for k in r["settled"].values())
                           + f" of {r['n_layers']}"
                           for n, r in readouts.items()) + ")",
              verdict=_verdict(early == groups),
              note="reproduced if every task group settles before the last layer; forced choice (T/F, she/he, verb "
                   "forms), examples the model gets right")

    _on_every_model(
        ctx, "A learned affine translator per layer (the tuned lens) reads the final distribution out of every layer "
             "better than the logit lens: lower KL to the final output at every layer.", tuned_paper,
        "tuned-lens KL <= logit-lens KL at",
        {n: (r["tuned_below"] == len(r["kl_logit"]), f"{r['tuned_below']} of {len(r['kl_logit'])} layers on "
                                                     f"{short[n]} (embeddings: {r['kl_tuned'][0]:.2f} vs "
                                                     f"{r['kl_logit'][0]:.2f} nats)") for n, r in readouts.items()},
        "reproduced if it holds at every layer on every model")


def _on_every_model(ctx: StudyContext, claim: str, paper: str, what: str, by_model: dict[str, tuple[bool, str]],
                    rule: str) -> None:
    """A claim that holds where it holds on every model: ``by_model`` gives each model's (holds, what was measured)."""
    measured = f"{what} " + "; ".join(text for _, text in by_model.values())
    ctx.claim(claim, paper=paper, measured=measured, note=f"{rule}; held-out text, every token",
              verdict=_verdict(all(holds for holds, _ in by_model.values())))


def _verdict(holds: bool) -> str:
    return "reproduced" if holds else "not reproduced"


def _scaled(cfg: dict[str, Any], key: str) -> dict[str, int]:
    """Per-group counts that add up to about ``cfg[key]`` texts over a model's task groups."""
    n = max(1, cfg[key] // 6)
    return {"n_per_depth": n, "n_names": n, "n_agreement": n}


def _held_out_kl(model: Any, texts: list[str], lens: Any, batch_size: int) -> list[float]:
    """Mean KL(final || lens) per layer over every real token of ``texts``."""
    total, count = None, 0
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        res = run_lens(model, chunk, lens) if lens is not None else logit_lens(model, chunk)
        kl = res.metrics["kl"][:, res.mask].sum(1)  # [layer]
        total = kl if total is None else total + kl
        count += int(res.mask.sum())
    return (total / count).tolist()
