"""``trilens capture MODEL --texts F --sites ... --out DIR``: stream a corpus's activations to a store."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..text_files import read_texts
from .model_args import add_model, load_model


def run(args: argparse.Namespace) -> int:
    from ..capture.dataset import capture_dataset

    if args.dataset is not None:
        from ..sources import read_rows

        texts = read_rows(args.dataset, split=args.split, text_column=args.text_column,
                          target_column=args.target_column).inputs
    else:
        texts = read_texts(args.texts)
    model = load_model(args)
    store = capture_dataset(model, texts, args.sites, args.out, batch_size=args.batch_size,
                            texts_per_shard=args.texts_per_shard, dtype=args.dtype, resume=args.resume,
                            overwrite=args.overwrite, shard=args.shard, truncate=args.truncate,
                            progress=not args.no_progress, engine=args.engine, address=args.address,
                            num_workers=args.num_workers, gpus_per_worker=args.gpus_per_worker)
    if store is None:
        print(f"part {args.shard} written to {args.out}; the store is complete once every part has run.")
    else:
        print(store)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("capture", help="stream activations of a corpus to an activation store")
    add_model(p)
    given = p.add_mutually_exclusive_group(required=True)
    given.add_argument("--texts", type=Path, help="one text per line, or .jsonl with text or source/target")
    given.add_argument("--dataset", type=Path, help="a datasets save_to_disk folder, or a .parquet, .jsonl, .json or .csv "
                       "file (its --text-column is read)")
    p.add_argument("--split", default=None, help="--dataset: the split of a dataset dict")
    p.add_argument("--text-column", default="text", help="--dataset: the column holding the texts")
    p.add_argument("--target-column", default=None, help="--dataset: an encoder-decoder's target column")
    p.add_argument("--sites", nargs="+", required=True, help="hook names or kinds, e.g. resid_post")
    p.add_argument("--out", type=Path, required=True, help="the store's folder")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--texts-per-shard", type=int, default=256)
    p.add_argument("--dtype", default=None, help="dtype on disk, e.g. float16")
    p.add_argument("--shard", default=None, help="i/n: do only part i of n (run n processes, the store merges them)")
    p.add_argument("--resume", action="store_true", help="continue a matching capture in --out")
    p.add_argument("--overwrite", action="store_true", help="replace whatever --out holds")
    p.add_argument("--truncate", action="store_true", help="cut texts longer than the model's context")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="ray: a Ray Data actor pool writes the shards (pip install 'trilens[ray]')")
    p.add_argument("--address", default=None, help="ray: the cluster ('auto': the one `ray start` began; default: "
                   "a local one)")
    p.add_argument("--num-workers", type=int, default=2, help="ray: workers, each with the model loaded once")
    p.add_argument("--gpus-per-worker", type=float, default=0, help="ray: GPUs per worker (0: CPU workers)")
    p.set_defaults(func=run)
