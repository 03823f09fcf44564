"""GRADIEND on the zoo: does a feature neuron learned from the models' own weight gradients read a two-class concept,
and does writing it back move the models toward a class while they keep modelling language?

zoo:bert and zoo:gpt: the names task (an invented name fixes the pronoun: class A "she", class B "he"); zoo:t5, not
trained on names: the logic task (a formula's value: class "T" or "F"), its decoder's parameters (config ``params``).
Per model: held-out |Pearson r| of the feature value with the class, the class means and the neutral mean (all
held-out and neutral texts, one gradient per text); the rewrite grid (P_A, P_B and the LM score of the rewrite chosen
for each metric); knowledge neurons (Dai et al.) per class, the effect of suppressing / amplifying them, and their
overlap with GRADIEND's largest decoder weights mapped to FFN neurons. With ``compare``: the same training with the
paper's factual source, with pre-pruning to ``keep_fraction`` of the coordinates, and (zoo:t5) with every parameter.
"""

from __future__ import annotations

import time

import pandas as pd

import trilens
from trilens.features import knowledge_neurons, rewrite_grid, train_gradiend, zoo_feature_data
from trilens.study import StudyContext

PAPER = "Drechsel & Herbold 2025"
PAPER_FAMILIES = ("encoder", "decoder")  # the paper's masked and decoder-only models (encoder-decoder: unreliable)
MIN_ABS_R = 0.9  # a feature that reads the class: held-out |r| at least this,
MIN_CLASS_MEAN = 0.5  # class A's mean at least +this, class B's at most -this (near +1 / -1),
MAX_NEUTRAL = 0.1  # and neutral text's within this of 0
MIN_MOVE = 0.1  # a rewrite that moves the model: a class probability or BPI up by at least this over the base model
PRUNED_KEEPS = 0.95  # pre-pruning keeps the feature: |r| at least this fraction of the unpruned one


def _train(ctx: StudyContext, model, data, variant: str, **kw):
    cfg = ctx.config
    start = time.perf_counter()
    g = train_gradiend(model, data, steps=cfg["steps"], eval_every=cfg["eval_every"], seeds=cfg["seeds"],
                       progress=ctx.progress, **kw)
    enc = g.encode(model, data.test + data.neutral, progress=ctx.progress)
    means = enc.class_means()
    a, b = data.classes
    row = {"model": model.name, "variant": variant, "coordinates": g.n_coordinates, "abs_r": round(abs(enc.correlation()), 4),
           "mean_A": round(means[a], 3), "mean_B": round(means[b], 3), "mean_neutral": round(means.get("neutral", float("nan")), 3),
           "seconds": round(time.perf_counter() - start, 1)}
    return g, enc, row


def _grid_rows(model, grid):
    rows = [{"model": model.name, "rewrite": "base", "h": None, "alpha": 0.0, **_pick(grid.base)}]
    for metric in ("bpi", "a_directed", "b_directed"):
        best = grid.best(metric)
        if best is not None:
            rows.append({"model": model.name, "rewrite": f"best {metric}", "h": best["h"], "alpha": best["alpha"], **_pick(best)})
    return rows


def _pick(row):
    return {k: round(row[k], 4) for k in ("p_a", "p_b", "bpi", "lms")}


def run(ctx: StudyContext) -> None:
    cfg = ctx.config
    summary, grids, kn_rows, kn_effects = [], [], [], []
    families, classes = {}, {}
    for name in cfg["models"]:
        model = trilens.load(name)
        data = zoo_feature_data(model.family, n_train=cfg["n_train"], n_test=cfg["n_test"], n_neutral=cfg["n_neutral"],
                                seed=cfg["seed"])
        families[name] = model.family
        classes[name] = tuple("/".join(map(str, tokens)) for tokens in data.class_tokens().values())  # she, he / T, F
        params = cfg["params"].get(name)
        g, enc, row = _train(ctx, model, data, "default" + (f" ({', '.join(params)})" if params else ""), params=params)
        summary.append(row)
        ctx.figure(f"{name[4:]}-training", g.figure())
        ctx.figure(f"{name[4:]}-encodings", enc.figure())
        grid = rewrite_grid(model, g, data, progress=ctx.progress)
        grids += _grid_rows(model, grid)
        ctx.figure(f"{name[4:]}-rewrite-pa", grid.figure("p_a"))
        ctx.table(f"{name[4:]}-rewrite-grid", grid.to_frame())
        kn = knowledge_neurons(model, data, n_prompts=cfg["kn_prompts"], n_steps=cfg["kn_steps"], share=cfg["kn_share"],
                               gradiend=g, progress=ctx.progress)
        ov = kn.overlap
        deltas = max(float(d.abs().max()) for d in kn.deltas.values())
        at_half = sum(int((share >= 0.5).sum()) for share in kn.kept_share.values())
        kn_rows.append({"model": name, **{f"neurons_{c}": len(v) for c, v in zip("AB", kn.neurons.values())},
                        "neurons_at_half_share": at_half,
                        "overlap": ov["overlap"], "k": ov["k"], "fraction": ov["fraction"],
                        "chance_fraction": ov["chance_fraction"], "max_ig_delta": deltas})
        kn_effects += [{"model": name, **e} for e in kn.effects]
        ctx.figure(f"{name[4:]}-knowledge-neurons", kn.figure())
        if cfg["compare"]:
            summary.append(_train(ctx, model, data, "paper pairing: factual source", params=params, source="factual")[2])
            summary.append(_train(ctx, model, data, f"pre-pruned to {cfg['keep_fraction']:.0%}", params=params,
                                  keep_fraction=cfg["keep_fraction"])[2])
            if params:
                summary.append(_train(ctx, model, data, "every base parameter")[2])
    frames = {"encoders": pd.DataFrame(summary), "rewrites": pd.DataFrame(grids), "knowledge_neurons": pd.DataFrame(kn_rows),
              "interventions": pd.DataFrame(kn_effects)}
    for key, frame in frames.items():
        ctx.table(key, frame)
        ctx.metric(key, frame.to_dict(orient="records"))
        ctx.say(f"## {key}\n")
        ctx.say("```\n" + frame.to_string(index=False) + "\n```")
        ctx.say()
    _claims(ctx, summary, grids, families, classes)


def _claims(ctx: StudyContext, summary, grids, families, classes) -> None:
    """The paper's claims against the held-out |r|, the chosen rewrites and (with ``compare``) pre-pruning; judged on
    the models of the paper's families, the others listed beside them."""
    judged = [name for name in families if families[name] in PAPER_FAMILIES]
    beyond = "" if len(judged) == len(families) else (
        f"judged on {', '.join(judged) or 'no model'} (the paper's masked and decoder-only families); "
        f"{', '.join(n for n in families if n not in judged)} listed, not judged")

    def verdict(holds: dict[str, bool]) -> str:
        if not any(name in holds for name in judged):
            return "not comparable"
        return "reproduced" if all(holds[name] for name in judged if name in holds) else "not reproduced"

    def joined(*parts: str) -> str:
        return "; ".join(p for p in parts if p)

    default = {r["model"]: r for r in summary if r["variant"].startswith("default")}
    factual = {r["model"]: r for r in summary if r["variant"].startswith("paper pairing")}
    reads = {name: r["abs_r"] >= MIN_ABS_R and r["mean_A"] >= MIN_CLASS_MEAN and r["mean_B"] <= -MIN_CLASS_MEAN
             and abs(r["mean_neutral"]) <= MAX_NEUTRAL for name, r in default.items()}
    ctx.claim("The feature neuron, learned from the model's weight gradients, reads a two-class concept: held-out "
              "texts of the two classes encode near +1 and -1 and neutral text near 0.", paper=PAPER,
              measured="held-out |r| (mean feature value per class and over neutral text): " + "; ".join(
                  f"{name} {r['abs_r']:.4f} ({classes[name][0]} {r['mean_A']:+.2f}, {classes[name][1]} "
                  f"{r['mean_B']:+.2f}, neutral {r['mean_neutral']:+.2f})" for name, r in default.items()),
              verdict=verdict(reads),
              note=joined(f"reproduced if |r| >= {MIN_ABS_R}, the class means are beyond +/-{MIN_CLASS_MEAN} and "
                          f"the neutral mean within {MAX_NEUTRAL} of 0", beyond,
                          "source = the counterfactual gradient; the paper's factual source gives |r| "
                          + ", ".join(f"{name} {r['abs_r']:.2f}" for name, r in factual.items()) if factual else ""))
    rewrites = {}
    for row in grids:
        rewrites.setdefault(row["model"], {})[row["rewrite"]] = row
    moves, parts = {}, []
    for name, chosen in rewrites.items():
        base, to_a, to_b, balanced = (chosen.get(k) for k in ("base", "best a_directed", "best b_directed", "best bpi"))
        a, b = classes[name]
        moves[name] = bool(to_a and to_b and balanced and to_a["p_a"] - base["p_a"] >= MIN_MOVE
                           and to_b["p_b"] - base["p_b"] >= MIN_MOVE and balanced["bpi"] - base["bpi"] >= MIN_MOVE)
        parts.append(f"{name} P({a}) {base['p_a']:.2f} -> " + (f"{to_a['p_a']:.2f}" if to_a else "none")
                     + f", P({b}) {base['p_b']:.2f} -> " + (f"{to_b['p_b']:.2f}" if to_b else "none")
                     + f", BPI {base['bpi']:.3f} -> " + (f"{balanced['bpi']:.3f}" if balanced else "none"))
    ctx.claim("Writing the decoder's weight direction back into the model moves it toward either class or balances "
              "the two (debiasing), while it keeps modelling language.", paper=PAPER,
              measured="best rewrite per aim with the LM score kept at >= 99% of the base model's: " + "; ".join(parts),
              verdict=verdict(moves),
              note=joined(f"reproduced if each aim raises its probability (or BPI) by >= {MIN_MOVE}", beyond))
    pruned = {r["model"]: r for r in summary if r["variant"].startswith("pre-pruned")}
    if pruned:
        keeps = {name: r["abs_r"] >= PRUNED_KEEPS * default[name]["abs_r"] for name, r in pruned.items()}
        ctx.claim(f"Pre-pruning the gradients to the top {ctx.config['keep_fraction']:.0%} of their coordinates keeps "
                  "the feature's quality.", paper=PAPER,
                  measured="held-out |r| pre-pruned vs all coordinates: " + "; ".join(
                      f"{name} {r['abs_r']:.4f} ({r['coordinates']:,}) vs {default[name]['abs_r']:.4f} "
                      f"({default[name]['coordinates']:,})" for name, r in pruned.items()),
                  verdict=verdict(keeps),
                  note=joined(f"reproduced if the pre-pruned |r| is >= {PRUNED_KEEPS:.0%} of the unpruned one", beyond))
