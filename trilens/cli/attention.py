"""``trilens attention steps ...``: attention degeneration over generation steps, as a table and a saved result."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import InputError
from .readers import read_texts

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


def step_table(result: Any) -> str:
    """Per metric, the mean over sequences, layers and heads at a few steps."""
    import pandas as pd

    shown = [t for t in TABLE_STEPS if t <= result.n_steps]
    rows = []
    for name in result.names:
        mean = result.curve(name, by="all")["mean"][0]
        rows.append({"metric": name, **{f"t={t}": float(mean[t - 1]) for t in shown}})
    if result.baseline is not None:
        base = result.baseline.nanmean(0)
        rows.append({"metric": "uniform baseline", **{f"t={t}": float(base[t - 1]) for t in shown}})
    return pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}")


def cmd_attention_steps(args: argparse.Namespace) -> int:
    import trilens

    from ..attention import attention_steps
    from ..viz import write_html

    model = trilens.load(args.model)
    inputs, targets = _split(read_texts(args.texts))
    sensitivity = None if args.sensitivity == "none" else args.sensitivity
    result = attention_steps(model, inputs, targets, max_new_tokens=args.max_new_tokens, sensitivity=sensitivity,
                             probes=args.probes, seed=args.seed, batch_size=args.batch_size, progress=not args.no_progress)
    print(f"attention over generation steps — {model.name}, {len(inputs)} inputs, "
          f"{'generated' if targets is None else 'given'} targets (means over sequences, layers and heads):\n")
    print(step_table(result))
    out = result.save(args.out, figure=True)
    if "sensitivity" in result.names:
        write_html(result.figure("sensitivity"), out / "sensitivity.html")
    write_html(result.grid_figure(), out / "grid.html")
    print(f"\nsaved to {out} (result, figure.html, grid.html" + (", sensitivity.html)" if "sensitivity" in result.names else ")"))
    return 0


def add_parser(sub: Any) -> None:
    attention = sub.add_parser("attention", help="attention over generation steps").add_subparsers(dest="attention", required=True)
    p = attention.add_parser("steps", help="per-step attention metrics and source sensitivity (after Fu et al. 2023)")
    p.add_argument("model")
    p.add_argument("--texts", type=Path, required=True,
                   help="prompts/sources one per line (the model generates), or JSON lines with \"text\", or with "
                        "\"source\" and \"target\" (teacher-forced; for decoder-only models the target continues the source)")
    p.add_argument("--out", type=Path, required=True, help="folder for the result and its figures")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--sensitivity", choices=["auto", "exact", "estimate", "none"], default="auto")
    p.add_argument("--probes", type=int, default=32, help="random directions per input for the estimate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_attention_steps)
