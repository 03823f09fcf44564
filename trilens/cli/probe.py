"""``trilens probe MODEL --data FILE.jsonl --label FIELD [--store DIR [--on-disk]]``: layerwise probes from the
command line, on activations the model computes or that a store holds."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..text_files import read_labelled
from .model_args import add_model, load_model


def cmd_probe(args: argparse.Namespace) -> int:
    from sklearn.exceptions import ConvergenceWarning

    from ..probes import probe_layers
    from ..probes.solver import MAX_ITER

    if args.data.suffix == ".jsonl":
        inputs, labels = read_labelled(args.data, args.label, args.level)
    else:  # a datasets folder, Parquet, CSV or JSON: read by column
        from ..sources import read_rows

        rows = read_rows(args.data, split=args.split, text_column=args.text_column, label_column=args.label)
        inputs, labels = rows.inputs, rows.labels
    if args.on_disk and not args.store:
        raise InputError("--on-disk keeps features from a store on disk: pass --store DIR (an ActivationStore of "
                         "the same texts, captured with `trilens capture ... --sites resid`).")
    model = load_model(args)
    source: Any = model
    if args.store:
        from ..capture.store import ActivationStore

        source = ActivationStore(args.store)
    pooling: Any = int(args.pooling) if args.pooling.lstrip("-").isdigit() else args.pooling
    with warnings.catch_warnings():  # an unconverged probe is reported below, in a line of its own
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = probe_layers(source, inputs, labels, level=args.level, pooling=pooling, subword=args.subword,
                              stacks=args.stacks, probe=args.probe, cv=args.cv, control=not args.no_control, C=args.C,
                              alpha=args.alpha, max_iter=MAX_ITER if args.max_iter is None else args.max_iter,
                              seed=args.seed, batch_size=args.batch_size, truncate=args.truncate,
                              tokenizer=model.tokenizer, on_disk=args.on_disk, progress=not args.no_progress)
    frame = result.table()
    where = f"{model.name}" + (f" (activations from the store {args.store})" if args.store else "")
    print(f"{result.info['probe']} probe of {args.label!r} on {where}: {result.info['n']} examples from "
          f"{result.info['n_texts']} distinct texts, {result.info['folds']}-fold {result.metric} per layer (0 = embeddings)")
    if result.info.get("majority") is not None:
        print(f"majority-class baseline {result.info['majority']:.3f}")
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if result.info.get("unconverged"):
        print(f"note: {len(result.info['unconverged'])} logistic probe(s) did not converge within --max-iter "
              f"{result.info['max_iter']}; raise --max-iter or lower --C")
    if args.out:
        result.save(args.out, figure=True)
        print(f"\nsaved to {args.out} (result.json, figure.html)")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probe", help="layerwise probes: how decodable a label is at every layer")
    add_model(p)
    p.add_argument("--data", type=Path, required=True, help="JSON lines with \"text\" (or source/target) and the label; "
                   "or a datasets save_to_disk folder, a .parquet, .csv or .json file (read by column)")
    p.add_argument("--split", default=None, help="--data a dataset dict: its split")
    p.add_argument("--text-column", default="text", help="--data read by column: the texts' column")
    p.add_argument("--label", required=True, help="the label field (a list of word labels at token level)")
    p.add_argument("--level", choices=["sentence", "token"], default="sentence")
    p.add_argument("--pooling", default="mean", help="sentence level: first|cls|mean|last or a token position")
    p.add_argument("--subword", choices=["first", "last", "mean"], default="first", help="token level: which sub-word")
    p.add_argument("--stacks", nargs="+", default=None, help="encoder and/or decoder (default: all)")
    p.add_argument("--probe", choices=["logistic", "ridge", "mlp"], default="logistic")
    p.add_argument("--cv", type=int, default=5)
    p.add_argument("--C", type=float, default=1.0, help="logistic probe: inverse L2 strength (scikit-learn's C)")
    p.add_argument("--max-iter", type=int, default=None, help="logistic probe: most L-BFGS iterations per layer (1000)")
    p.add_argument("--alpha", type=float, default=1.0, help="ridge probe: L2 strength")
    p.add_argument("--no-control", action="store_true", help="skip the control task")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--truncate", action="store_true")
    p.add_argument("--store", type=Path, default=None,
                   help="read the activations from this ActivationStore of the same texts instead of running MODEL")
    p.add_argument("--on-disk", action="store_true",
                   help="with --store: keep the per-layer features in temporary files and train on them in chunks")
    p.add_argument("--out", type=Path, default=None, help="save the result (result.json) and its figure (figure.html) here")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_probe)
