"""Layerwise probing on zoo:bert (and zoo:minilm where installed): where are a formula's truth value,
its depth, its subformulas' values and a subject's number linearly decodable?

Reference (Pirozelli et al. 2023, RoBERTa-large on RuleTaker): probes for the reasoning answer stay at
chance up to layer 15 of 24 and reach 99% only from layer 20: reasoning is decoded in the upper layers.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

import trilens
from trilens.errors import ModelLoadError
from trilens.capture.dataset import capture_dataset
from trilens.probes import cross_probe, evaluate_features, features_from_store
from trilens.study import StudyContext
from trilens.zoo import tasks as T
from trilens.zoo.formats import mlm_item

PAPER = "Pirozelli et al. (2023)"
# the paper's claims are about a model trained to reason: zoo:bert, trained on logic (zoo:minilm is a contrast)
TRAINED_ON_LOGIC = ("zoo:bert",)
CHANCE_MARGIN = 0.05  # "at chance": accuracy within this of the majority class


def subformula_labels(ex: T.Example) -> list[Any]:
    """Per word of the formula: the value of the innermost subformula that ends there (None elsewhere)."""
    labels: list[Any] = [None] * len(ex.text.split())
    depth_at: dict[int, int] = {}
    for sub in ex.meta["subformulas"]:
        end = sub["end"] - 1
        if end not in depth_at or sub["depth"] < depth_at[end]:
            depth_at[end] = sub["depth"]
            labels[end] = "T" if sub["value"] else "F"
    return labels


def distinct(examples: list[T.Example]) -> list[T.Example]:
    """The first example of each distinct text, in order."""
    seen: set[str] = set()
    return [ex for ex in examples if not (ex.text in seen or seen.add(ex.text))]


def datasets(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each probing task: texts in zoo:bert's format (from one of two corpora), labels, level and pooling."""
    # each distinct text once: the generators repeat short formulas and sentences (250 depth-1 draws hold 10
    # formulas), and copies would weigh a few texts heavily in the folds
    logic = distinct(T.logic(cfg["n_per_depth"], seed=cfg["seed"], depths=(1, 2, 3, 4), split="test"))
    texts = [mlm_item(ex).text for ex in logic]
    agree = distinct(T.agreement(cfg["n_agreement"], seed=cfg["seed"], split="test"))
    a_texts = [mlm_item(ex).text for ex in agree]
    # the subject's number at every word of the sentence and at the masked verb; the adjective unlabelled
    a_words = [ex.meta["number"] + [ex.label, None] for ex in agree]
    truth = [ex.target for ex in logic]
    at_mask = [[None] * len(ex.text.split()) + [None, ex.target] for ex in logic]
    subformulas = [subformula_labels(ex) + [None, None] for ex in logic]
    return {
        "truth value (mean)": _task(texts, truth, "logic", "sentence", "mean"),
        "truth value (CLS)": _task(texts, truth, "logic", "sentence", "first"),
        "truth value at [MASK]": _task(texts, at_mask, "logic", "token"),
        "formula depth": _task(texts, [ex.meta["depth"] for ex in logic], "logic", "sentence", "mean"),
        "subformula values": _task(texts, subformulas, "logic", "token"),
        "subject number": _task(a_texts, a_words, "agreement", "token"),
    }, logic


def _task(texts: list[str], labels: list[Any], corpus: str, level: str, pooling: str = "mean") -> dict[str, Any]:
    return {"texts": texts, "labels": labels, "corpus": corpus, "level": level, "pooling": pooling}


def run(ctx: StudyContext) -> None:
    cfg = ctx.config
    tasks, logic = datasets(cfg)
    for name in cfg["models"]:
        try:
            model = trilens.load(name)
        except ModelLoadError as err:
            ctx.say(f"## {name}: skipped ({err})")
            ctx.metric(name, {"skipped": str(err)})
            continue
        n_layers = model.n_layers["encoder"]
        ctx.say(f"## {name} ({n_layers} layers; layer 0 = embeddings), logistic probes, {cfg['cv']}-fold CV grouped "
                "by text, control task per word type (Hewitt & Liang)")
        ctx.say("")
        ctx.say(f"  {'property':<24}{'chance':>7}  accuracy per layer" + " " * max(0, 7 * (n_layers + 1) - 18)
                + f"{'best':>6}{'sel.':>7}")
        results, features = {}, {}
        with tempfile.TemporaryDirectory(prefix="trilens-probing-") as tmp:
            # one forward pass per text set: each task pools its representation from the stored residual stream
            stores = {}
            for task, spec in tasks.items():
                corpus = spec["corpus"]
                if corpus not in stores:
                    stores[corpus] = capture_dataset(model, spec["texts"], ["resid"], Path(tmp) / corpus,
                                                     batch_size=cfg["batch_size"], dtype="float32", progress=ctx.progress)
                features[task] = features_from_store(stores[corpus], spec["labels"], level=spec["level"],
                                                     pooling=spec["pooling"], texts=spec["texts"],
                                                     tokenizer=model.tokenizer, progress=False)
        for task, feat in features.items():
            res = evaluate_features(feat, cv=cfg["cv"], seed=cfg["seed"])
            frame = res.table()
            best = res.best_layer()
            results[task] = {"n": feat.n, "majority": round(res.info["majority"], 4),
                             "accuracy_by_layer": [round(v, 4) for v in frame["task_mean"]],
                             "std_by_layer": [round(v, 4) for v in frame["task_std"]],
                             "control_by_layer": [round(v, 4) for v in frame["control_mean"]],
                             "selectivity_by_layer": [round(v, 4) for v in frame["selectivity"]],
                             "best_layer": best, "unconverged_probes": len(res.info["unconverged"]),
                             "first_layer_within_2_points_of_best": int(
                                 next(k for k, v in enumerate(frame["task_mean"]) if v >= frame["task_mean"].max() - 0.02))}
            ctx.say(f"  {task:<24}{res.info['majority']:>7.2f}  " + "".join(f"{v:>7.2f}" for v in frame["task_mean"])
                    + f"{best:>6}{frame['selectivity'][best]:>7.2f}")
            ctx.figure(f"{name[4:]}_{task.replace(' ', '_').replace('(', '').replace(')', '').replace('[', '').replace(']', '')}",
                       res.figure(title=f"{name}: probing '{task}' per layer (task vs control, ±1 std over folds)"))
        # -- cross-probing ---------------------------------------------------------------------------
        depth = np.array([ex.meta["depth"] for ex in logic])
        truth = features["truth value (mean)"]
        shallow, deep = _subset(truth, depth <= 2), _subset(truth, depth >= 3)
        cross = {
            "truth value: depth 1-2 -> depth 3-4": cross_probe(shallow, deep),
            "subformula values -> truth value at [MASK]": cross_probe(features["subformula values"], features["truth value at [MASK]"]),
            "truth value at [MASK] -> subformula values": cross_probe(features["truth value at [MASK]"], features["subformula values"]),
        }
        ctx.say("")
        ctx.say("  cross-probing (train on one, test on the other), accuracy per layer:")
        for label, res in cross.items():
            curve = res.curve()["mean"].tolist()
            results[f"cross: {label}"] = {"accuracy_by_layer": [round(v, 4) for v in curve], "best_layer": res.best_layer(),
                                          "unconverged_probes": len(res.info["unconverged"])}
            ctx.say(f"  {label:<44}" + "".join(f"{v:>7.2f}" for v in curve))
        ctx.metric(name, results)
        upper = results["truth value at [MASK]"]["first_layer_within_2_points_of_best"]
        ctx.say("")
        ctx.say(f"  The truth value at [MASK] is decoded within 2 points of its best from layer {upper} of {n_layers}"
                f" (best {max(results['truth value at [MASK]']['accuracy_by_layer']):.2f});"
                f" in the lower half of the network it reaches "
                f"{max(results['truth value at [MASK]']['accuracy_by_layer'][: n_layers // 2 + 1]):.2f}.")
        ctx.say("")
    for name in TRAINED_ON_LOGIC:
        if "truth value at [MASK]" in ctx.metrics.get(name, {}):
            _claims(ctx, name, ctx.metrics[name]["truth value at [MASK]"])


def _claims(ctx: StudyContext, name: str, answer: dict[str, Any]) -> None:
    """Pirozelli et al.'s claims against the probes for the answer at [MASK] (the answer slot)."""
    acc = answer["accuracy_by_layer"]
    n_layers, chance, best = len(acc) - 1, answer["majority"], max(acc)
    upper = answer["first_layer_within_2_points_of_best"]
    ctx.claim("A model trained to reason decodes the answer only in its upper layers: probes reach their best accuracy "
              "only near the top (99% from layer 20 of 24 in RoBERTa-large).", paper=PAPER,
              measured=f"{name}, truth value at [MASK]: within 2 points of its best ({best:.2f}, chance {chance:.2f}) "
                       f"from layer {upper} of {n_layers}",
              verdict="reproduced" if upper > n_layers / 2 and best >= chance + 0.1 else "not reproduced",
              note="reproduced if that layer is in the upper half and the best is at least 10 points above chance")
    lower = acc[: n_layers // 3 + 1]
    ctx.claim("Below the upper layers the answer is not decodable: probes stay at chance (up to layer 15 of 24 in "
              "RoBERTa-large).", paper=PAPER,
              measured=f"{name}, truth value at [MASK] in the lower third (layers 0-{n_layers // 3}): "
                       f"{min(lower):.2f}-{max(lower):.2f}, chance {chance:.2f}",
              verdict="reproduced" if max(lower) <= chance + CHANCE_MARGIN else "not reproduced",
              note=f"at chance: within {CHANCE_MARGIN:.2f} of the majority class at every layer of the lower third")


def _subset(feat: Any, keep: np.ndarray) -> Any:
    from trilens.probes import Features

    idx = np.flatnonzero(keep)
    return Features(x={k: v[:, idx] for k, v in feat.x.items()}, labels=feat.labels[idx], groups=feat.groups[idx],
                    types=[feat.types[i] for i in idx], info=feat.info)
