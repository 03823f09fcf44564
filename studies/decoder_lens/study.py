"""Decoder lens on zoo:t5: at which encoder layer is a formula solved, by depth; reverse per layer.

Question (Langedijk et al., "DecoderLens", 2023): when the decoder reads an intermediate encoder
layer instead of the last, do easier inputs already get the right answer at earlier layers?
"""

from __future__ import annotations

from collections import defaultdict
from itertools import pairwise

import trilens
from trilens.lens import decoder_lens
from trilens.study import StudyContext
from trilens.viz import curves
from trilens.zoo import tasks as T
from trilens.zoo.formats import seq2seq_item

LENGTH_BUCKETS = [(4, 8), (9, 12), (13, 18), (19, 24)]


def solved_layer(acc: list[float], tolerance: float) -> int:
    """First encoder layer whose accuracy is within ``tolerance`` of the last layer's."""
    return next(k for k, a in enumerate(acc) if a >= acc[-1] - tolerance)


def run(ctx: StudyContext) -> None:
    cfg = ctx.config
    model = trilens.load(cfg["model"])
    n_layers = model.n_layers["encoder"]

    # -- logic: accuracy per encoder layer and depth ------------------------------------------
    exs = T.logic(cfg["n_per_depth"], seed=cfg["seed"], depths=tuple(cfg["depths"]), split="test")
    res = decoder_lens(model, [seq2seq_item(ex)[0] for ex in exs], references=[ex.target for ex in exs],
                       max_new_tokens=2, batch_size=cfg["batch_size"])
    # Forced choice between the two answers (teacher-forced log-probability of "T" vs "F"): greedy
    # output at low layers is often not an answer at all, which exact match alone scores as wrong.
    sources = [seq2seq_item(ex)[0] for ex in exs]
    right = decoder_lens(model, sources, references=[ex.target for ex in exs], mode="teacher", batch_size=cfg["batch_size"])
    wrong = decoder_lens(model, sources, references=["F" if ex.target == "T" else "T" for ex in exs], mode="teacher",
                         batch_size=cfg["batch_size"])
    depth = [ex.meta["depth"] for ex in exs]
    by_depth: dict[int, list[float]] = {}
    choice: dict[int, list[float]] = {}
    for d in cfg["depths"]:
        idx = [i for i, x in enumerate(depth) if x == d]
        by_depth[d] = [sum(res.scores["exact_match"][k][i] for i in idx) / len(idx) for k in range(n_layers + 1)]
        choice[d] = [sum(right.scores["target_logprob"][k][i] > wrong.scores["target_logprob"][k][i] for i in idx) / len(idx)
                     for k in range(n_layers + 1)]
    answers = [sum(o in ("T", "F") for o in outs) / len(outs) for outs in res.outputs]
    solved = {d: solved_layer(acc, cfg["solved_within"]) for d, acc in by_depth.items()}
    solved_choice = {d: solved_layer(acc, cfg["solved_within"]) for d, acc in choice.items()}
    ctx.metric("logic_accuracy_by_layer", {str(d): [round(a, 4) for a in acc] for d, acc in by_depth.items()})
    ctx.metric("logic_forced_choice_by_layer", {str(d): [round(a, 4) for a in acc] for d, acc in choice.items()})
    ctx.metric("logic_output_is_an_answer_by_layer", [round(a, 4) for a in answers])
    ctx.metric("logic_solved_layer", {str(d): k for d, k in solved.items()})
    ctx.metric("logic_solved_layer_forced_choice", {str(d): k for d, k in solved_choice.items()})
    ctx.metric("logic_n_per_depth", cfg["n_per_depth"])
    holds = _earlier_for_easier([solved[d] for d in cfg["depths"]])
    holds_choice = _earlier_for_easier([solved_choice[d] for d in cfg["depths"]])
    ctx.metric("easier_solved_earlier", holds)
    ctx.metric("easier_solved_earlier_forced_choice", holds_choice)
    ctx.table("logic_by_layer", res.table(groups=depth))
    ctx.figure("logic_accuracy_by_layer", _curves(by_depth, "depth", "logic accuracy (T/F exact match)",
                                                  f"Decoder lens on {cfg['model']}: logic accuracy per encoder layer read"))
    ctx.figure("logic_forced_choice_by_layer", _curves(choice, "depth", "forced choice T vs F (accuracy)",
                                                       f"Decoder lens on {cfg['model']}: p(right) > p(wrong) per encoder layer read"))

    # -- reverse: exact match per layer and length ---------------------------------------------
    lo, hi = cfg["reverse_lengths"]
    rev = [ex for k in range(lo, hi + 1) for ex in T.reverse(cfg["n_per_length"], seed=cfg["seed"], lengths=(k, k), split="test")]
    rres = decoder_lens(model, [seq2seq_item(ex)[0] for ex in rev], references=[ex.target for ex in rev],
                        max_new_tokens=hi + 2, batch_size=cfg["batch_size"])
    lengths = [ex.meta["length"] for ex in rev]
    by_bucket: dict[str, list[float]] = {}
    for a, b in LENGTH_BUCKETS:
        idx = [i for i, n in enumerate(lengths) if a <= n <= b]
        if idx:
            by_bucket[f"{a}-{b}"] = [sum(rres.scores["exact_match"][k][i] for i in idx) / len(idx) for k in range(n_layers + 1)]
    chrf = [sum(v) / len(v) for v in rres.scores["chrf"]]
    ctx.metric("reverse_exact_match_by_layer", {k: [round(a, 4) for a in v] for k, v in by_bucket.items()})
    ctx.metric("reverse_chrf_by_layer", [round(c, 2) for c in chrf])
    examples = defaultdict(dict)
    for i in _spread(lengths, 3):
        for k in sorted({0, n_layers // 2, n_layers - 1, n_layers}):
            examples[rev[i].text][f"layer {k}"] = rres.outputs[k][i]
    ctx.metric("reverse_examples", examples)
    ctx.table("reverse_by_layer", rres.table(groups=[_bucket(n) for n in lengths]))
    ctx.figure("reverse_exact_match_by_layer", _curves(by_bucket, "length", "reverse exact match",
                                                       f"Decoder lens on {cfg['model']}: reverse exact match per encoder layer read"))

    # -- summary ---------------------------------------------------------------------------------
    ctx.say(f"Decoder lens on {cfg['model']} ({n_layers} encoder layers; layer 0 = embeddings), "
            f"{cfg['n_per_depth']} held-out formulas per depth.")
    ctx.say("")
    ctx.say("logic accuracy per encoder layer read:")
    ctx.say("  depth " + "".join(f"{k:>7}" for k in range(n_layers + 1)) + "   solved at")
    for d, acc in by_depth.items():
        ctx.say(f"  {d:>5} " + "".join(f"{a:>7.2f}" for a in acc) + f"   layer {solved[d]}")
    ctx.say("  T/F?  " + "".join(f"{a:>7.2f}" for a in answers) + "   (share of outputs that are an answer at all)")
    ctx.say("forced choice (teacher-forced p(right answer) > p(wrong answer)):")
    for d, acc in choice.items():
        ctx.say(f"  {d:>5} " + "".join(f"{a:>7.2f}" for a in acc) + f"   layer {solved_choice[d]}")
    for name, flag, where in (("exact match", holds, solved), ("forced choice", holds_choice, solved_choice)):
        ctx.say(f"'Easier formulas are solved at earlier layers' {'holds' if flag else 'does not hold'} by {name}: "
                + ", ".join(f"depth {d} -> layer {where[d]}" for d in cfg["depths"])
                + f" (first layer within {cfg['solved_within']:.0%} of the last layer's accuracy).")
    ctx.say("")
    ctx.say("reverse exact match per encoder layer read:")
    for name, acc in by_bucket.items():
        ctx.say(f"  len {name:>5} " + "".join(f"{a:>7.2f}" for a in acc))
    ctx.say("  chrF      " + "".join(f"{c:>7.1f}" for c in chrf))
    ctx.say("")
    ctx.say("reverse examples (source -> output when the decoder reads layer k):")
    for src, outs in examples.items():
        ctx.say(f"  {src}")
        for layer, out in outs.items():
            ctx.say(f"    {layer:>8}: {out}")

    # -- the paper's claim, against this run's numbers -----------------------------------------------
    paper = "Langedijk et al. 2023 (DecoderLens)"
    depths = cfg["depths"]
    ctx.claim("Simpler inputs are solved at earlier encoder layers: shallower formulas reach the final layer's "
              "accuracy from an earlier layer than deeper ones.",
              paper=paper,
              measured=f"logic depth {'/'.join(str(d) for d in depths)} solved at layer "
                       f"{'/'.join(str(solved[d]) for d in depths)} by exact match and "
                       f"{'/'.join(str(solved_choice[d]) for d in depths)} by forced choice, of {n_layers} "
                       f"(first layer within {cfg['solved_within']:.0%} of the last layer's accuracy)",
              verdict="reproduced" if holds and holds_choice else "not reproduced",
              note=f"reproduced if, by both measures, the solved layer never decreases with depth and depth "
                   f"{depths[-1]} is solved later than depth {depths[0]}; depths >= 3 are not seen in training")
    inner = range(1, n_layers)  # layer 0 and the last layer are the same for every length
    inner_mean = {length: sum(acc[k] for k in inner) / len(inner) for length, acc in by_bucket.items()}
    ordered = sum(_never_rises([acc[k] for acc in by_bucket.values()]) for k in inner)
    ctx.claim("Simpler inputs are solved at earlier encoder layers: read from an intermediate layer, shorter strings "
              "are reversed correctly more often than longer ones.",
              paper=paper,
              measured=f"reverse exact match averaged over intermediate layers 1-{n_layers - 1}: "
                       f"{'/'.join(f'{v:.2f}' for v in inner_mean.values())} for lengths {'/'.join(by_bucket)}; "
                       f"it never rises with length at {ordered} of {len(inner)} single intermediate layers",
              verdict="reproduced" if _never_rises(list(inner_mean.values())) else "not reproduced",
              note=f"reproduced if the average never rises with length; {cfg['n_per_length']} strings per length")


def _earlier_for_easier(layers: list[int]) -> bool:
    """Solved layers never decrease with depth, and the deepest is solved later than the shallowest."""
    return all(a <= b for a, b in zip(layers, layers[1:])) and layers[0] < layers[-1]


def _never_rises(values: list[float]) -> bool:
    """Each value is at most the one before it."""
    return all(a >= b for a, b in pairwise(values))


def _bucket(n: int) -> str:
    return next(f"{a}-{b}" for a, b in LENGTH_BUCKETS if a <= n <= b)


def _spread(lengths: list[int], n: int) -> list[int]:
    """Indices of ``n`` examples spread over the lengths (shortest, middle, longest)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[round(j * (len(order) - 1) / max(1, n - 1))] for j in range(n)]


def _curves(series: dict, label: str, yaxis: str, title: str):
    n = len(next(iter(series.values())))
    fig = curves(list(range(n)), {f"{label} {k}": v for k, v in series.items()}, title=title, y_title=yaxis,
                 x_title="encoder layer read by the decoder (0 = embeddings)")
    fig.update_yaxes(range=[0, 1.02])
    return fig
