"""``trilens attention steps|relevancy ...``: attention degeneration over generation steps, and where each output token's
information comes from (relevancy, rollout, flow), as tables and saved results."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..text_files import read_texts
from .model_args import add_model, load_model

# Steps shown in the printed table (those beyond the longest generation are left out).
TABLE_STEPS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)


def _split(texts: list[Any]) -> tuple[list[Any], list[str] | None]:
    """Prompts/sources and targets: every line a plain text (the model generates), or every line a pair."""
    pairs = [isinstance(t, tuple) for t in texts]
    if any(pairs) and not all(pairs):
        raise InputError("the texts file mixes plain texts and source/target pairs: give targets for all lines or none.")
    if not all(pairs):
        return texts, None
    return [s for s, _ in texts], [t for _, t in texts]


def cmd_attention_steps(args: argparse.Namespace) -> int:
    from ..attention import attention_steps
    from ..viz import write_html

    model = load_model(args)
    if (args.texts is None) == (args.dataset is None):
        raise InputError("pass one of --texts FILE (one text per line, or JSON lines) and --dataset PATH (a datasets "
                         "folder, Parquet, JSON lines or CSV read by column).")
    if args.dataset is not None:
        from ..sources import model_inputs

        inputs, targets = model_inputs(args.dataset, "decoder", split=args.split, text_column=args.text_column,
                                       target_column=args.target_column)  # prompts and targets, for every family
    else:
        inputs, targets = _split(read_texts(args.texts))
    sensitivity = None if args.sensitivity == "none" else args.sensitivity
    result = attention_steps(model, inputs, targets, max_new_tokens=args.max_new_tokens, sensitivity=sensitivity,
                             probes=args.probes, seed=args.seed, batch_size=args.batch_size, progress=not args.no_progress)
    print(f"attention over generation steps — {model.name}, {len(inputs)} inputs, "
          f"{'generated' if targets is None else 'given'} targets (means over sequences, layers and heads):\n")
    print(result.table(TABLE_STEPS).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    out = result.save(args.out, figure=True)
    if "sensitivity" in result.names:
        write_html(result.figure("sensitivity"), out / "sensitivity.html")
    write_html(result.grid_figure(), out / "grid.html")
    print(f"\nsaved to {out} (result, figure.html, grid.html" + (", sensitivity.html)" if "sensitivity" in result.names else ")"))
    return 0


def maps_table(result: Any, sequence: int = 0, top: int = 3) -> str:
    """Per step: the output token and, per method, its ``top`` most relevant source tokens with their values."""
    lines = []
    width = max(len(m) for m in result.methods)
    for t, token in enumerate(result.step_tokens[sequence]):
        lines.append(f"step {t + 1}: {token}")
        for method in result.methods:
            row = result.map(method, sequence)[t]
            best = row.topk(min(top, len(row))).indices.tolist()
            cells = ", ".join(f"{j}:{result.source_tokens[sequence][j]} {float(row[j]):.3g}" for j in best)
            lines.append(f"    {method:<{width}}  {cells}")
    return "\n".join(lines)


def cmd_attention_relevancy(args: argparse.Namespace) -> int:
    from ..attention import relevancy_maps
    from ..viz import write_html

    model = load_model(args)
    targets = None if args.target is None else [args.target]
    methods = args.methods or (["relevancy", "rollout"] + (["flow"] if model.family != "encoder-decoder" else []))
    result = relevancy_maps(model, [args.text], targets, methods=methods, max_new_tokens=args.max_new_tokens,
                            score=args.score)
    print(f"where each output token comes from — {model.name} "
          f"({'generated' if targets is None else 'given'} target; top {args.top} source tokens per method)\n")
    print(maps_table(result, top=args.top))
    if args.out:
        out = result.save(args.out, figure=True)
        for method in result.methods[1:]:
            write_html(result.figure(method), out / f"{method}.html")
        print(f"\nsaved to {out} (result, figure.html = {result.methods[0]}"
              + "".join(f", {m}.html" for m in result.methods[1:]) + ")")
    return 0


def add_parser(sub: Any) -> None:
    attention = sub.add_parser("attention", help="attention over generation steps; relevancy, rollout, flow").add_subparsers(dest="attention", required=True)
    p = attention.add_parser("steps", help="per-step attention metrics and source sensitivity (after Fu et al. 2023)")
    add_model(p)
    p.add_argument("--texts", type=Path, default=None,
                   help="prompts/sources one per line (the model generates), or JSON lines with \"text\", or with "
                        "\"source\" and \"target\" (teacher-forced; for decoder-only models the target continues the source)")
    p.add_argument("--dataset", type=Path, default=None, help="instead of --texts: a datasets folder, Parquet, JSON "
                   "lines or CSV, read by column")
    p.add_argument("--split", default=None, help="the split of a datasets folder with several")
    p.add_argument("--text-column", default="text")
    p.add_argument("--target-column", default=None, help="teacher-forced targets (default: the model generates)")
    p.add_argument("--out", type=Path, required=True, help="folder for the result and its figures")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--sensitivity", choices=["auto", "exact", "estimate", "none"], default="auto")
    p.add_argument("--probes", type=int, default=32, help="random directions per input for the estimate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_attention_steps)
    p = attention.add_parser("relevancy", help="relevancy, rollout and flow maps of one input, per output step")
    add_model(p)
    p.add_argument("text", help="a prompt, a source, or a text with a mask token (encoder-only)")
    p.add_argument("--target", default=None, help="teacher-forced target (encoder-only: the token to score at the mask); "
                                                   "default: the model's own greedy output")
    p.add_argument("--methods", nargs="+", choices=["relevancy", "rollout", "flow"], default=None,
                   help="default: relevancy and rollout, and flow for one-stack models")
    p.add_argument("--score", choices=["logprob", "logit", "prob"], default="logprob", help="what relevancy differentiates")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--top", type=int, default=3)
    p.add_argument("--out", type=Path, default=None, help="save the result and its figures to this folder")
    p.set_defaults(func=cmd_attention_relevancy)
