"""``trilens lens ...``: the logit, decoder and tuned lenses from the command line, as readable tables."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..text_files import read_plain_texts
from . import language
from .model_args import add_model, load_model


def _grid(result: Any, sequence: int, width: int = 10) -> str:
    """Layers x positions: the top-1 token at each position, like the notebook heatmap."""
    cols = result.mask[sequence].nonzero().flatten().tolist()
    def cell(s: str) -> str:
        return (s if len(s) <= width - 1 else s[: width - 2] + "…").ljust(width)

    lines = ["layer | " + "".join(cell(result.token(result.input_ids[sequence, c])) for c in cols)]
    lines.append("-" * len(lines[0]))
    for layer in range(result.n_layers):
        lines.append(f"{layer:>5} | " + "".join(cell(result.token(result.top_ids[layer, sequence, c, 0])) for c in cols))
    return "\n".join(lines)


def _metrics_table(frame: Any) -> str:
    return frame.to_string(index=False, float_format=lambda v: f"{v:.3f}")


def cmd_lens_logit(args: argparse.Namespace) -> int:
    from ..lens import logit_lens

    model = load_model(args)
    inputs: Any = args.text
    if model.family == "encoder-decoder":
        if args.target is None:
            raise InputError("an encoder-decoder's logit lens reads the decoder: pass --target TEXT to teacher-force.")
        inputs = [(args.text, args.target)]
    result = logit_lens(model, inputs)
    print(f"logit lens: top-1 prediction per layer (0 = embeddings) and position — {model.name}\n")
    print(_grid(result, 0))
    print("\nper-layer metrics (nats; means over positions):")
    print(_metrics_table(result.table()))
    if args.out:
        print(f"\nsaved to {result.save(args.out)}")
    return 0


def cmd_lens_decoder(args: argparse.Namespace) -> int:
    from ..lens import decoder_lens

    model = load_model(args)
    refs = [args.reference] if args.reference is not None else None
    result = decoder_lens(model, [args.source], references=refs, mode=args.mode, max_new_tokens=args.max_new_tokens)
    print(f"decoder lens — {model.name}: what the decoder outputs when it reads encoder layer k\n")
    print(result.text(0))
    if args.out:
        print(f"\nsaved to {result.save(args.out)}")
    return 0


def cmd_lens_tuned(args: argparse.Namespace) -> int:
    from ..lens import TunedLens, logit_lens, run_lens

    model = load_model(args)
    texts = read_plain_texts(args.texts, "the tuned lens")
    if args.action == "train":
        lens = TunedLens.from_model(model)
        losses = lens.fit(model, texts, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                          progress=not args.no_progress)
        print(f"trained {args.steps} steps: loss {losses[0]:.4f} -> {losses[-1]:.4f}; saved to {lens.save(args.out)}")
        return 0
    lens = TunedLens.load(args.lens, model)
    logit = logit_lens(model, texts).table()
    tuned = run_lens(model, texts, lens).table()
    frame = logit[["layer"]].assign(logit_kl=logit["kl"], tuned_kl=tuned["kl"], logit_ce=logit["cross_entropy"],
                                    tuned_ce=tuned["cross_entropy"])
    print(f"logit vs tuned lens on {len(texts)} texts — {model.name}")
    print(_metrics_table(frame))
    return 0


def add_parser(sub: Any) -> None:
    lens = sub.add_parser("lens", help="logit, decoder, tuned and language lenses; the linear shortcut").add_subparsers(dest="lens", required=True)
    p = lens.add_parser("logit", help="the logit lens on one text")
    add_model(p)
    p.add_argument("text")
    p.add_argument("--target", default=None, help="the target text (encoder-decoder models)")
    p.add_argument("--out", type=Path, default=None, help="save the result to this folder")
    p.set_defaults(func=cmd_lens_logit)
    p = lens.add_parser("decoder", help="the decoder lens on one source (encoder-decoder models)")
    add_model(p)
    p.add_argument("source")
    p.add_argument("--reference", default=None)
    p.add_argument("--mode", choices=["generate", "teacher"], default="generate")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--out", type=Path, default=None)
    p.set_defaults(func=cmd_lens_decoder)
    p = lens.add_parser("tuned", help="train or evaluate a tuned lens")
    p.add_argument("action", choices=["train", "eval"])
    add_model(p)
    p.add_argument("--texts", type=Path, required=True)
    p.add_argument("--out", type=Path, help="train: where to save the lens")
    p.add_argument("--lens", type=Path, help="eval: the saved lens")
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_lens_tuned)
    language.add_parsers(lens)
