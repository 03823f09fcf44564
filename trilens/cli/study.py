"""``trilens study list`` and ``trilens study run NAME``: the scripted studies in ``studies/``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import InputError


def _overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise InputError(f"--set takes KEY=VALUE (VALUE in JSON, e.g. n_per_depth=50), not {pair!r}.")
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value  # a bare string
    return out


def cmd_study_list(args: argparse.Namespace) -> int:
    from ..study import list_studies

    for name, what in list_studies(args.studies_dir).items():
        print(f"  {name:<22}{what}")
    return 0


def cmd_study_run(args: argparse.Namespace) -> int:
    from ..study import run_study

    if args.name == "all":
        return _run_all(args)
    out = args.out or Path("study-results") / args.name
    ctx = run_study(args.name, out, quick=args.quick, overrides=_overrides(args.set), path=args.studies_dir,
                    progress=not args.no_progress, overwrite=args.overwrite)
    print("\n".join(ctx.summary))
    print(f"\nwritten to {out}: metrics.json, summary.md" + (f", figures/ ({len(ctx.figures)} HTML)" if ctx.figures else ""))
    return 0


def _run_all(args: argparse.Namespace) -> int:
    from ..study_report import run_all

    if args.set:
        raise InputError("--set applies to one study; run all takes each study's own config (with --quick, its quick one).")
    out = args.out or Path("study-results")
    report, failed = run_all(out, quick=args.quick, path=args.studies_dir, progress=not args.no_progress,
                             overwrite=args.overwrite)
    for name, error in failed.items():
        print(f"study {name} failed: {error}")
    print(f"report: {report}")
    return 1 if failed else 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    study = sub.add_parser("study", help="run the scripted studies that reproduce published findings")
    ssub = study.add_subparsers(dest="study_command", required=True)
    p = ssub.add_parser("list", help="the studies and what each asks")
    p.add_argument("--studies-dir", default=None)
    p.set_defaults(func=cmd_study_list)
    p = ssub.add_parser("run", help="run one study (metrics as JSON, figures as HTML, a printed summary), or all of "
                        "them and one report (report.html)")
    p.add_argument("name", help="a study (trilens study list), or 'all'")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: study-results/NAME; for all, "
                   "study-results with report.html)")
    p.add_argument("--quick", action="store_true", help="the study's small configuration (a smoke run)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config setting")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--studies-dir", default=None, help="where the studies live (default: the checkout's studies/)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_study_run)
