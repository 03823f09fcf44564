"""``trilens gradiend train|encode|rewrite``: learn a two-class feature neuron from a model's gradients, read it on
texts, and write a rewritten copy of the model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .model_args import add_model, load_model


def _data(model: Any, args: argparse.Namespace) -> Any:
    from ..features import read_jsonl, zoo_feature_data

    if args.data is not None:
        return read_jsonl(args.data)
    return zoo_feature_data(model.family, args.zoo_task, n_train=args.n_train, seed=args.seed)


def _gradiend(path: Path) -> Any:
    from ..features.folder import read_feature_folder

    return read_feature_folder(path)


def _means_line(enc: Any) -> str:
    return ", ".join(f"{k} {v:+.3f}" for k, v in enc.class_means().items())


def cmd_train(args: argparse.Namespace) -> int:
    from ..features import rewrite_grid, train_gradiend
    from ..features.folder import write_feature_folder

    model = load_model(args)
    data = _data(model, args)
    gradiend = train_gradiend(model, data, params=args.params, exclude=args.exclude, keep_fraction=args.keep,
                              batch_size=args.batch_size, steps=args.steps, epochs=args.epochs,
                              eval_every=args.eval_every, seeds=args.seeds, lr=args.lr, source=args.source,
                              target=args.target, progress=not args.no_progress)
    ev = gradiend.evaluation
    print(f"{gradiend.summary()}\nkept: seed {ev['seed']}, step {ev['step']}; held-out mean h: "
          f"{data.classes[0]} {ev['mean_a']:+.3f}, {data.classes[1]} {ev['mean_b']:+.3f} ({ev['n_eval']} rows); "
          f"{gradiend.info['seconds']['total']:.1f} s")
    enc = gradiend.encode(model, data.test[: args.n_encode] + data.neutral[: args.n_encode], progress=not args.no_progress)
    print(f"encoded held-out and neutral texts: mean h {_means_line(enc)}")
    grid = None
    if args.grid:
        grid = rewrite_grid(model, gradiend, data, progress=not args.no_progress)
        print(grid.summary())
    out = write_feature_folder(args.out, gradiend, data, enc, grid)
    print(f"saved to {out} ({', '.join(p.name for p in sorted(out.iterdir()))})")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    from ..features import FeatureRow

    model = load_model(args)
    gradiend = _gradiend(args.gradiend).gradiend
    rows = [FeatureRow(t, args.token) for t in args.texts]
    enc = gradiend.encode(model, rows, progress=not args.no_progress)
    print(f"feature value h (+1 = {gradiend.classes[0]}, -1 = {gradiend.classes[1]}); slot token read\n")
    width = max(len(t) for t in enc.texts)
    for text, token, value in zip(enc.texts, enc.tokens, enc.values[:, 0].tolist()):
        print(f"{text:<{width}}  {token:>10}  {value:+.3f}")
    if args.out:
        print(f"\nsaved to {enc.save(args.out, figure=True)}")
    return 0


def cmd_rewrite(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..features import read_jsonl, rewrite, rewrite_grid, save_model

    model = load_model(args)
    folder = _gradiend(args.gradiend)
    gradiend = folder.gradiend
    data_file = args.data or folder.data_path
    if args.metric is not None:
        if data_file is None:
            raise InputError("the grid search needs data: pass --data F.jsonl (or the folder train wrote).")
        grid = rewrite_grid(model, gradiend, read_jsonl(data_file, classes=gradiend.classes), progress=not args.no_progress)
        best = grid.best(args.metric)
        if best is None:
            raise InputError(f"no rewrite kept the LM score at 99% of the base model's for {args.metric}.")
        h, alpha = best["h"], best["alpha"]
        print(f"{grid.summary()}\nchosen for {args.metric}: h={h:+g}, α={alpha:g}")
    else:
        if args.alpha is None or (args.h is None) == (args.toward is None):
            raise InputError("give --alpha and one of --h or --toward CLASS (or --metric for a grid search).")
        h = args.h if args.h is not None else gradiend.h_toward(args.toward)
        alpha = args.alpha
    rewritten = rewrite(model, gradiend, h, alpha)
    if data_file is not None:
        from ..features.rewrite_grid import ClassProbabilities

        data = read_jsonl(data_file, classes=gradiend.classes)
        probs = ClassProbabilities(model, data.test, gradiend.class_tokens, gradiend.classes)
        for name, m in (("base", model), ("rewritten", rewritten)):
            p_a, p_b = probs(m)
            print(f"{name:>9}: P({gradiend.classes[0]}) {float(p_a.mean()):.3f}, P({gradiend.classes[1]}) "
                  f"{float(p_b.mean()):.3f} on {len(data.test)} held-out texts")
    print(f"saved the rewritten model (h={h:+g}, α={alpha:g}) to {save_model(rewritten, args.out)}")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("gradiend", help="feature neurons from gradients (GRADIEND): train, encode, rewrite")
    cmds = p.add_subparsers(dest="gradiend_command", required=True, metavar="ACTION")

    t = cmds.add_parser("train", help="learn a feature neuron for a two-class concept")
    add_model(t)
    t.add_argument("--data", type=Path, default=None, help="JSON lines: text, factual, counterfactual, class (, split)")
    t.add_argument("--zoo-task", choices=["names", "logic"], default=None,
                   help="without --data: a zoo concept (default names; logic for encoder-decoders)")
    t.add_argument("--n-train", type=int, default=1024, help="zoo concept: training rows")
    t.add_argument("--seed", type=int, default=0, help="zoo concept: data seed")
    t.add_argument("--out", type=Path, required=True, help="folder for the GRADIEND, encodings, data (and grid)")
    t.add_argument("--params", nargs="*", default=None, help="parameter name patterns (default: the whole base model)")
    t.add_argument("--exclude", nargs="*", default=None, help="parameter name patterns to leave out")
    t.add_argument("--keep", type=float, default=1.0, help="pre-pruning: fraction of weight coordinates kept")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--steps", type=int, default=None, help="updates per seed (default: --epochs passes, at least 300)")
    t.add_argument("--epochs", type=int, default=3)
    t.add_argument("--eval-every", type=int, default=250)
    t.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    t.add_argument("--lr", type=float, default=1e-5)
    t.add_argument("--source", choices=["factual", "counterfactual", "diff"], default="counterfactual")
    t.add_argument("--target", choices=["factual", "counterfactual", "diff"], default="diff")
    t.add_argument("--n-encode", type=int, default=64, help="held-out and neutral texts encoded after training")
    t.add_argument("--grid", action="store_true", help="also score the rewrite grid")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_train)

    e = cmds.add_parser("encode", help="the feature value of texts")
    add_model(e)
    e.add_argument("gradiend", type=Path, help="the folder `gradiend train --out` wrote")
    e.add_argument("texts", nargs="+", help="texts with their class slot ([MASK] for encoder-only models)")
    e.add_argument("--token", default=None, help="the slot's token (default: the model's own prediction)")
    e.add_argument("--out", type=Path, default=None)
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=cmd_encode)

    r = cmds.add_parser("rewrite", help="save a copy of the model rewritten along the feature")
    add_model(r)
    r.add_argument("gradiend", type=Path, help="the folder `gradiend train --out` wrote")
    r.add_argument("--out", type=Path, required=True, help="folder for the rewritten HF model")
    r.add_argument("--h", type=float, default=None, help="feature value to push toward")
    r.add_argument("--toward", default=None, help="a class name: the h that moves the model toward it")
    r.add_argument("--alpha", type=float, default=None, help="the step α")
    r.add_argument("--metric", choices=["bpi", "a_directed", "b_directed"], default=None,
                   help="instead of --h/--alpha: search the grid and take the best rewrite for this metric")
    r.add_argument("--data", type=Path, default=None, help="rows for the metrics (default: the training folder's)")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(func=cmd_rewrite)
