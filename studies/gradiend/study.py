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
    for name in cfg["models"]:
        model = trilens.load(name)
        data = zoo_feature_data(model.family, n_train=cfg["n_train"], n_test=cfg["n_test"], n_neutral=cfg["n_neutral"],
                                seed=cfg["seed"])
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
