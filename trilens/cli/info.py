"""``trilens info MODEL [--json]``: family, stacks, layer counts and hook sites of a model."""

from __future__ import annotations

import argparse
import json

from .model_args import add_model, load_model


def run(args: argparse.Namespace) -> int:
    model = load_model(args)
    info = model.info()
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"{info['name']}  ({info['architecture']}, {info['family']})")
    print(f"  d_model {info['d_model']}, vocabulary {info['vocab_size']}, context {info['max_length'] or 'unbounded'}, "
          f"{info['dtype']} on {info['device']}" + ("" if info["has_trained_head"] else ", untrained LM head"))
    if info.get("placement"):
        print("  placement (accelerate): " + ", ".join(f"{m or 'all'} -> {d}" for m, d in info["placement"].items()))
    print(f"  {'stack':<10}{'layers':>8}{'heads':>8}")
    for stack, s in info["stacks"].items():
        print(f"  {stack:<10}{s['layers']:>8}{s['heads']:>8}")
    print(f"  {'site kind':<22}{'sites':>6}  example")
    for kind in info["site_kinds"]:
        names = model.sites(kind=kind)
        print(f"  {kind:<22}{len(names):>6}  {names[0]}")
    print(f"  {info['n_sites']} hook sites in all (model.sites() lists them)")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="family, stacks, layer counts and hook sites of a model")
    add_model(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)
