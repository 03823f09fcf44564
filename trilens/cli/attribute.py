"""``trilens attribute MODEL "text" ...``: which input tokens made the model produce each output token, as a token
table, a saved result and an HTML figure."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .model_args import add_model, load_model

MAX_COLUMNS = 24  # steps shown in the printed table


def attribution_table(result: Any, sequence: int = 0, max_columns: int = MAX_COLUMNS) -> str:
    """Rows: source tokens, then the target prefix; columns: output steps; then the step scores."""
    import pandas as pd
    import torch

    src, tgt = result.scores(sequence, "source"), result.scores(sequence, "target")
    steps = result.step_tokens[sequence][: min(src.shape[0], max_columns)]
    columns = [f"{t + 1}:{tok}" for t, tok in enumerate(steps)]
    labels = [f"src {i}:{tok}" for i, tok in enumerate(result.tokens(sequence, "source"))]
    labels += [f"tgt {i}:{tok}" for i, tok in enumerate(result.tokens(sequence, "target"))]
    values = torch.cat([src, tgt], 1)[: len(steps)].T.numpy()
    frame = pd.DataFrame(values, index=labels, columns=columns)
    for name, v in result.step_scores.items():
        frame.loc[f"[{name}]"] = v[sequence, : len(steps)].numpy()
    if result.deltas is not None:
        frame.loc["[convergence delta]"] = result.deltas[sequence, : len(steps)].numpy()
    text = frame.to_string(float_format=lambda v: f"{v:.3g}")
    if src.shape[0] > len(steps):
        text += f"\n({src.shape[0] - len(steps)} more steps in the saved result)"
    return text


def cmd_attribute(args: argparse.Namespace) -> int:
    from ..attribution import attribute

    model = load_model(args)
    if model.family == "encoder-decoder" and args.target is not None:
        inputs, targets = [(args.text, args.target)], None
    else:
        inputs, targets = [args.text], None if args.target is None else [args.target]
    step_scores = list(args.step_scores)
    if args.contrast is not None and "contrast_prob_diff" not in step_scores:
        step_scores.append("contrast_prob_diff")
    result = attribute(model, inputs, targets, method=args.method, contrast=args.contrast, score=args.score,
                       step_scores=step_scores, baseline=args.baseline, n_steps=args.n_steps,
                       max_new_tokens=args.max_new_tokens, method_args={"abs": True} if args.abs else None,
                       include_target=not args.source_only, progress=not args.no_progress)
    result = result.aggregate(args.hidden, words=args.words, normalise=args.normalise)
    what = "contrastive " if args.contrast is not None else ""
    print(f"{result.method} {what}attributions — {model.name}, {result.info['params']['targets']} target, "
          f"score {result.info['params']['score']}, per token: {result.value_title}\n")
    print(attribution_table(result))
    if args.out:
        out = result.save(args.out, figure=True)
        print(f"\nsaved to {out} (result and figure.html)")
    return 0


def add_parser(sub: Any) -> None:
    from ..attribution.methods import ALIASES, METHODS, STEP_SCORES

    p = sub.add_parser("attribute", help="attribution of each output token to the input (captum methods, all families)")
    add_model(p)
    p.add_argument("text", help="a prompt, a source, or a text with mask tokens (encoder-only)")
    p.add_argument("--target", default=None, help="teacher-forced target (encoder-only: the token for the mask); "
                                                   "default: the model's own greedy output")
    p.add_argument("--method", default="saliency", choices=sorted(METHODS) + sorted(ALIASES), metavar="METHOD",
                   help=f"one of {', '.join(METHODS)} (aliases {', '.join(ALIASES)})")
    p.add_argument("--contrast", default=None, help="a contrast text aligned to the target (one token per step), "
                                                     "or the foil token (encoder-only)")
    p.add_argument("--score", choices=["logprob", "prob", "logit"], default=None,
                   help="what is attributed (default logprob; prob with --contrast)")
    p.add_argument("--step-scores", nargs="*", default=["probability", "entropy"], choices=sorted(STEP_SCORES),
                   metavar="SCORE", help=f"any of {', '.join(STEP_SCORES)}")
    p.add_argument("--baseline", default=None, help="zeros, pad, unk, mask, eos, bos or a token (methods with a baseline)")
    p.add_argument("--n-steps", type=int, default=50, help="integrated gradients' interpolation points")
    p.add_argument("--abs", action="store_true", help="saliency: absolute gradients (captum's default)")
    p.add_argument("--hidden", choices=["l2", "sum"], default="l2", help="over the hidden dimension")
    p.add_argument("--words", action="store_true", help="sum sub-words into words")
    p.add_argument("--normalise", choices=["l1"], default=None, help="normalise each step")
    p.add_argument("--source-only", action="store_true", help="encoder-decoders: leave the target prefix out")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--out", type=Path, default=None, help="save the result and figure.html to this folder")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_attribute)
