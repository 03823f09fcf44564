"""``trilens patch MODEL --clean "..." --corrupted "..."``: which component, at which position, carries the difference
between a clean and a corrupted input (activation patching, or attribution patching), as a table of the top cells, a
saved result and an HTML figure."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import InputError
from .model_args import add_model, load_model

GENERATED_TARGET_TOKENS = 32  # an encoder-decoder given no --target is teacher-forced on its own greedy output


def _per_pair(values: list[str] | None, n: int, flag: str) -> Any:
    """One value for every pair (given once) or one per pair; None where not given."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    if len(values) != n:
        raise InputError(f"{flag} was given {len(values)} times for {n} clean/corrupted pairs: give it once (the same "
                         "for every pair) or once per pair.")
    return list(values)


def pair_inputs(model: Any, clean: list[str], corrupted: list[str], target: list[str] | None) -> tuple[list[Any], list[Any], str]:
    """The clean and corrupted model inputs, and a note on where an encoder-decoder's target came from ("" if given).
    Both runs of a pair are teacher-forced on the same target."""
    if len(clean) != len(corrupted):
        raise InputError(f"{len(clean)} --clean inputs but {len(corrupted)} --corrupted ones: give one corrupted input per "
                         "clean input, in the same order.")
    if model.family != "encoder-decoder":
        if target:
            raise InputError(f"--target is for encoder-decoder models (a teacher-forced target); this {model.family} model "
                             "reads the clean and corrupted texts alone.")
        return list(clean), list(corrupted), ""
    note = ""
    targets = _per_pair(target, len(clean), "--target")
    if targets is None:
        generated = model.generate(list(clean), max_new_tokens=GENERATED_TARGET_TOKENS)
        targets = [t.strip() for t in generated.texts]
        if not all(targets):
            raise InputError("the model generated nothing for a clean source: pass --target TEXT to teacher-force.")
        note = "target: the model's greedy output for each clean source: " + ", ".join(repr(t) for t in targets)
    targets = [targets] * len(clean) if isinstance(targets, str) else targets
    return list(zip(clean, targets)), list(zip(corrupted, targets)), note


def build_metric(args: argparse.Namespace, n_pairs: int) -> Any:
    """The metric from --metric, --token, --foil and --score (``TokenScore``, ``StepScores``, ``"kl"`` or None: the
    clean prediction's logit minus the corrupted prediction's)."""
    from .. import StepScores, TokenScore

    token, foil = _per_pair(args.token, n_pairs, "--token"), _per_pair(args.foil, n_pairs, "--foil")
    if args.step is not None and args.metric != "steps":
        raise InputError("--step picks one step of --metric steps.")
    if args.metric == "kl":
        if token is not None or foil is not None or args.score is not None:
            raise InputError("--metric kl compares whole next-token distributions: leave out --token, --foil and --score.")
        return "kl"
    if args.metric == "steps":
        if token is not None:
            raise InputError("--metric steps scores each token of the target: leave out --token (--foil gives a "
                             "contrasting token for every step).")
        return StepScores(score=args.score or "logprob", foil=foil)
    if token is None and foil is None:
        if args.score is not None:
            raise InputError("--score says how --token (and --foil) are scored: pass --token, or leave --score out for "
                             "the default metric (the clean prediction's logit minus the corrupted prediction's).")
        return None
    return TokenScore(token=token, foil=foil, score=args.score or "logit")


def top_table(result: Any, k: int) -> str:
    """The ``k`` cells with the largest |normalised value| (the mean over pairs): panel, layer, position:token, head."""
    import pandas as pd

    rows = [{"panel": c["panel"], "layer": c["layer"],
             "position": f"{c['position']}:{c['token']}" if "position" in c else "all",
             "head": c.get("head", ""), "normalised": c["value"]} for c in result.top(k)]
    if not rows:
        return "(no cell has a finite normalised value: the clean and corrupted metrics are equal)"
    return pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}")


def load_pairs(args: argparse.Namespace) -> tuple[Any, list[Any], list[Any], Any, str]:
    """The model, the clean and corrupted inputs, the metric and the target note: what ``patch`` and ``circuit``
    start from."""

    model = load_model(args)
    clean, corrupted, note = pair_inputs(model, args.clean, args.corrupted, args.target)
    return model, clean, corrupted, build_metric(args, len(clean)), note


def cmd_patch(args: argparse.Namespace) -> int:
    from ..patching import attribution_patching, patching_sweep
    from ..patching.result import METHOD_TITLES

    model, clean, corrupted, metric, note = load_pairs(args)
    heads: Any = False if args.heads is None else (args.heads or True)
    common = dict(sites=args.sites, heads=heads, positions=args.positions, direction=args.direction, step=args.step,
                  stacks=args.stacks)
    if args.method == "exact":
        result = patching_sweep(model, clean, corrupted, metric, batch_size=args.batch_size,
                                progress=not args.no_progress, **common)
    else:
        result = attribution_patching(model, clean, corrupted, metric, method=args.method, **common)
    if note:
        print(note)
    n = result.n_pairs
    print(f"{METHOD_TITLES.get(result.method, result.method)}, {result.direction} — {model.name}, {n} pair"
          f"{'s' if n != 1 else ''}, metric {result.info['params']['metric']}: clean "
          f"{float(result.m_clean.mean()):.4g}, corrupted {float(result.m_corrupted.mean()):.4g}\n")
    print(f"top {args.top} cells (normalised: 1 = the clean run's metric, 0 = the corrupted run's; mean over pairs):")
    print(top_table(result, args.top))
    if args.out:
        out = result.save(args.out, figure=True)
        print(f"\nsaved to {out} (result and figure.html)")
    return 0


def add_pair_arguments(p: argparse.ArgumentParser) -> None:
    """MODEL, the clean and corrupted inputs, the target and the metric: what ``patch`` and ``circuit`` share."""
    add_model(p)
    p.add_argument("--clean", action="extend", nargs="+", required=True, metavar="TEXT",
                   help="the clean input(s) (an encoder-decoder's source; an encoder's text with its [MASK])")
    p.add_argument("--corrupted", action="extend", nargs="+", required=True, metavar="TEXT",
                   help="one corrupted input per clean input, of equal token length (e.g. one name for another)")
    p.add_argument("--target", action="extend", nargs="+", default=None, metavar="TEXT",
                   help="encoder-decoders: the teacher-forced target of both runs (once, or once per pair); default: "
                        "the model's greedy output for each clean source")
    p.add_argument("--token", action="extend", nargs="+", default=None, metavar="TOKEN",
                   help="score this token (once, or once per pair), e.g. ' Mary'")
    p.add_argument("--foil", action="extend", nargs="+", default=None, metavar="TOKEN",
                   help="minus the score of this token, e.g. ' John'")
    p.add_argument("--score", choices=["logit", "logprob", "prob"], default=None,
                   help="how --token/--foil are scored (default logit; logprob for --metric steps)")
    p.add_argument("--metric", choices=["logit_diff", "kl", "steps"], default="logit_diff",
                   help="logit_diff: --token minus --foil, by default the clean prediction minus the corrupted one; "
                        "kl: KL(clean || patched); steps: every target step's score (their mean, or --step)")
    p.add_argument("--step", type=int, default=None, help="with --metric steps: score this step only")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("patch", help="activation patching and attribution patching of a clean vs a corrupted input")
    add_pair_arguments(p)
    p.add_argument("--sites", nargs="+", default=None, metavar="KIND",
                   help="whole-activation kinds (default resid_pre attn_out mlp_out, and cross_attn_out)")
    p.add_argument("--heads", nargs="*", default=None, metavar="KIND",
                   help="patch each head too: its output z (no KIND), or per-head kinds among z q k v attn_pattern")
    p.add_argument("--stacks", nargs="+", choices=["encoder", "decoder"], default=None,
                   help="patch these stacks only (an encoder-decoder's decoder needs equal targets only)")
    p.add_argument("--positions", choices=["each", "all"], default="each",
                   help="each: a cell per position; all: a cell is a whole layer (or a head at every position)")
    p.add_argument("--direction", choices=["denoise", "noise"], default="denoise",
                   help="denoise: the corrupted run with a clean activation; noise: the reverse")
    p.add_argument("--method", choices=["exact", "atp", "atp*"], default="exact",
                   help="exact: one patched run per cell, batched; atp / atp*: attribution patching, every cell at once")
    p.add_argument("--batch-size", type=int, default=32, help="exact: patched runs per forward pass")
    p.add_argument("--top", type=int, default=10, help="cells shown")
    p.add_argument("--out", type=Path, default=None, help="save the result and figure.html to this folder")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_patch)
