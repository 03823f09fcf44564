"""``trilens circuit MODEL --clean "..." --corrupted "..."``: edge attribution (EAP-IG, or EAP) over the residual graph,
the top edges, the fewest edges whose circuit recovers 90% of the metric, and the circuit's figure."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .patch import add_pair_arguments, load_pairs


def edge_table(edges: list[dict[str, Any]]) -> str:
    import pandas as pd

    if not edges:
        return "(no edge)"
    return pd.DataFrame(edges).to_string(index=False, float_format=lambda v: f"{v:+.4g}")


def cmd_circuit(args: argparse.Namespace) -> int:
    from ..patching import edge_attribution

    model, clean, corrupted, metric, note = load_pairs(args)
    result = edge_attribution(model, clean, corrupted, metric, method=args.method, steps=args.steps, step=args.step,
                              faithfulness=True if args.edges is None else sorted({0, args.edges}),
                              batch_size=args.batch_size, progress=not args.no_progress)
    if note:
        print(note)
    n = result.n_pairs
    print(f"{result.method.upper()} — {model.name}, {n} pair{'s' if n != 1 else ''}, {len(result.senders)} senders, "
          f"{len(result.receivers)} receivers, {result.n_edges} edges; metric {result.info['params']['metric']}: "
          f"clean {float(result.m_clean.mean()):.4g}, corrupted {float(result.m_corrupted.mean()):.4g}\n")
    print(f"top {args.top} edges (score: the metric's first-order change when the edge carries its clean value):")
    print(edge_table(result.top_edges(args.top)))
    recovered = result.recovered()
    if args.edges is None:
        chosen = result.edges_to_recover(args.recover)
        curve = ", ".join(f"{s}: {float(v):.2f}" for s, v in zip(result.sizes, recovered))
        print(f"\nfaithfulness (edges: share of the metric recovered): {curve}")
        if chosen is None:
            print(f"no measured circuit recovers {args.recover:.0%} of the metric short of every edge")
            chosen = result.n_edges
        else:
            print(f"{chosen} edges recover {args.recover:.0%} of the metric")
    else:
        chosen = args.edges
        print(f"\nthe top {chosen} edges recover {float(recovered[-1]):.3f} of the metric (1 = the clean run)")
    edges = result.circuit(chosen)
    print(f"\nthe circuit ({len(edges)} of the top {chosen} edges lie on a path from an input to the logits):")
    print(edge_table(edges[:args.show]) + (f"\n... {len(edges) - args.show} more" if len(edges) > args.show else ""))
    if args.out:
        out = result.save(args.out, figure=True)
        print(f"\nsaved to {out} (result and figure.html)")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("circuit", help="edge attribution circuits (EAP-IG) of a clean vs a corrupted input")
    add_pair_arguments(p)
    p.add_argument("--method", choices=["eap-ig", "eap"], default="eap-ig",
                   help="eap-ig: gradients averaged on the path from the corrupted to the clean input; eap: at the "
                        "corrupted run")
    p.add_argument("--steps", type=int, default=5, help="eap-ig: points on the path")
    p.add_argument("--edges", type=int, default=None,
                   help="measure this circuit size only (default: a series of sizes, and the fewest that recover "
                        "--recover of the metric)")
    p.add_argument("--recover", type=float, default=0.9, help="the share of the metric a circuit must recover")
    p.add_argument("--batch-size", type=int, default=16, help="runs per forward pass")
    p.add_argument("--top", type=int, default=10, help="top edges shown")
    p.add_argument("--show", type=int, default=40, help="circuit edges shown")
    p.add_argument("--out", type=Path, default=None, help="save the result and figure.html to this folder")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_circuit)
