"""The ``trilens`` command line: ``trilens info MODEL``, ``trilens capture MODEL ...``.

Every ``TrilensError`` is printed as one line (``trilens: error: ...``) with exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from .errors import InputError, TrilensError


def _read_texts(path: Path) -> list[Any]:
    """Texts from a file: one per line, or JSON lines with "text" or "source"/"target" fields."""
    if not path.exists():
        raise InputError(f"texts file {path} does not exist.")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise InputError(f"texts file {path} is empty.")
    if path.suffix != ".jsonl":
        return lines
    out: list[Any] = []
    for i, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{path}:{i} is not valid JSON ({err.msg}).") from err
        out.append(row_input(row, path, i))
    return out


def row_input(row: dict[str, Any], path: Path, line: int) -> Any:
    """The model input of one JSON line: its "text", or its ("source", "target") pair."""
    if "text" in row:
        return row["text"]
    if "source" in row and "target" in row:
        return (row["source"], row["target"])
    raise InputError(f"{path}:{line} has neither a \"text\" field nor \"source\" and \"target\" fields.")


def cmd_info(args: argparse.Namespace) -> int:
    import trilens

    model = trilens.load(args.model)
    info = model.info()
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"{info['name']}  ({info['architecture']}, {info['family']})")
    print(f"  d_model {info['d_model']}, vocabulary {info['vocab_size']}, context {info['max_length'] or 'unbounded'}, "
          f"{info['dtype']} on {info['device']}" + ("" if info["has_trained_head"] else ", untrained LM head"))
    print(f"  {'stack':<10}{'layers':>8}{'heads':>8}")
    for stack, s in info["stacks"].items():
        print(f"  {stack:<10}{s['layers']:>8}{s['heads']:>8}")
    print(f"  {'site kind':<22}{'sites':>6}  example")
    for kind in info["site_kinds"]:
        names = model.sites(kind=kind)
        print(f"  {kind:<22}{len(names):>6}  {names[0]}")
    print(f"  {info['n_sites']} hook sites in all (model.sites() lists them)")
    return 0


def cmd_capture(args: argparse.Namespace) -> int:
    import trilens
    from .capture.dataset import capture_dataset

    texts = _read_texts(args.texts)
    model = trilens.load(args.model)
    store = capture_dataset(model, texts, args.sites, args.out, batch_size=args.batch_size,
                            texts_per_shard=args.texts_per_shard, dtype=args.dtype, resume=args.resume,
                            overwrite=args.overwrite, shard=args.shard, truncate=args.truncate,
                            progress=not args.no_progress)
    if store is None:
        print(f"part {args.shard} written to {args.out}; the store is complete once every part has run.")
    else:
        print(store)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trilens", description="Interpretability for encoder, decoder and encoder-decoder transformers.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress messages")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="family, stacks, layer counts and hook sites of a model")
    p.add_argument("model", help="a model directory, hub id or zoo:NAME")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("capture", help="stream activations of a corpus to an activation store")
    p.add_argument("model")
    p.add_argument("--texts", type=Path, required=True, help="one text per line, or .jsonl with text or source/target")
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
    p.set_defaults(func=cmd_capture)

    from .cli_lens import add_lens_parser

    add_lens_parser(sub)
    from .cli_probe import add_probe_parser

    add_probe_parser(sub)
    from .cli_study import add_study_parser

    add_study_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.func(args)
    except TrilensError as err:
        print(f"trilens: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
