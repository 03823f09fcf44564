"""The ``trilens`` entry point: build the parser from the subcommand modules, dispatch, report errors.

Every ``TrilensError`` is printed as one line (``trilens: error: ...``) with exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import TrilensError
from . import app, attention, attribute, capture, circuit, gradiend, info, lens, patch, probe, study

# One module per subcommand, each with ``add_parser(subparsers)``; the order is the order of ``--help``.
SUBCOMMANDS = (info, capture, lens, probe, attention, attribute, patch, circuit, gradiend, study, app)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trilens", description="Interpretability for encoder, decoder and encoder-decoder transformers.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(sub)
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
