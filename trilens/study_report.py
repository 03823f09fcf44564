"""``trilens study run all``: every study, then one report of them all (``report.html``, one self-contained page that
opens offline): per study, each founding paper's claim, trilens's measured number and a verdict, the figures inline,
and the exact command, seeds and versions behind them."""

from __future__ import annotations

import json
import logging
import traceback
from pathlib import Path

from .errors import InputError
from .study import list_studies, run_study
from .viz.html import figure_from_json
from .viz.page import Section, write_page

REPORT = "report.html"
log = logging.getLogger(__name__)


def run_all(out: str | Path, *, quick: bool = False, path: str | Path | None = None, progress: bool = True,
            overwrite: bool = False, only: list[str] | None = None) -> tuple[Path, dict[str, str]]:
    """Run every study (or those in ``only``) into ``out/<name>/`` and write ``out/report.html`` -> (the report's path,
    study -> error message for those that failed). A failing study does not stop the others; the report says it
    failed, with its error."""
    out = Path(out)
    names = list(list_studies(path))
    if only:
        unknown = [n for n in only if n not in names]
        if unknown:
            raise InputError(f"no study named {unknown[0]!r}; studies: {', '.join(names)}.")
        names = [n for n in names if n in only]
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out} is not empty: choose another --out or pass --overwrite.")
    out.mkdir(parents=True, exist_ok=True)
    failed: dict[str, str] = {}
    for name in names:
        try:
            run_study(name, out / name, quick=quick, path=path, progress=progress, overwrite=True)
        except Exception as err:  # noqa: BLE001 - one study's failure is reported, the others still run
            log.error("study %s failed: %s", name, err)
            failed[name] = f"{type(err).__name__}: {err}"
            (out / name).mkdir(exist_ok=True)
            (out / name / "error.txt").write_text(traceback.format_exc())
    return write_report(out, names, failed), failed


def write_report(out: str | Path, names: list[str] | None = None, failed: dict[str, str] | None = None) -> Path:
    """``out/report.html`` from the study folders in ``out`` (each written by ``run_study``)."""
    out = Path(out)
    failed = failed or {}
    names = names or sorted(p.name for p in out.iterdir() if (p / "metrics.json").exists() or p.name in failed)
    if not names:
        raise InputError(f"{out} holds no study results (folders with metrics.json): run trilens study run all first.")
    built = [_section(out / name, name, failed.get(name)) for name in names]
    sections = [s for s, _ in built]
    counts: dict[str, int] = {}
    for _, verdicts in built:
        for verdict in verdicts:
            counts[verdict] = counts.get(verdict, 0) + 1
    tally = ", ".join(f"{n} {v}" for v, n in sorted(counts.items())) or "no claims"
    intro = [f"{len(names)} studies; their claims: {tally}" + (f"; {len(failed)} failed to run" if failed else "") + ".",
             "Each study set its own verdicts from what it measured on the zoo's models (README of each study: why the "
             "zoo's setting stands in for the paper's). Every number can be made again with the command shown."]
    return write_page(out / REPORT, "trilens: the founding papers' claims, measured", sections, intro)


def _section(folder: Path, name: str, error: str | None) -> tuple[Section, list[str]]:
    """One study's part of the report, and its verdicts."""
    s = Section(title=name.replace("_", " "), anchor=name)
    if error is not None:
        s.text(f"This study failed to run: {error}", cls="failed")
        return s, ["failed"]
    saved = json.loads((folder / "metrics.json").read_text())
    claims = saved.get("claims", [])
    if claims:
        rows = [[c["paper"], c["claim"], c["measured"], c["verdict"]] + ([c["note"]] if any(x["note"] for x in claims)
                                                                           else []) for c in claims]
        header = ["paper", "claim", "trilens measured", "verdict"] + (["note"] if len(rows[0]) == 5 else [])
        classes = [[None, None, None, f"verdict {c['verdict'].replace(' ', '-')}"] + [None] * (len(header) - 4)
                   for c in claims]
        s.table(header, rows, classes)
    else:
        s.text("This study sets no claim against a paper.", cls="muted")
    seeds = {k: v for k, v in saved.get("config", {}).items() if "seed" in k}
    s.text(f"Run in {saved.get('seconds', '?')} s" + (" (quick configuration)" if saved.get("quick") else "")
           + (f"; seeds {json.dumps(seeds)}" if seeds else "") + ". Versions: "
           + ", ".join(f"{k} {v}" for k, v in saved.get("versions", {}).items()) + ".", cls="muted")
    if saved.get("command"):
        s.code(saved["command"] + " --out DIR")
    summary = (folder / "summary.md").read_text() if (folder / "summary.md").exists() else ""
    if summary.strip():
        s.blocks.append("<details><summary>the study's printed summary</summary>")
        s.code(summary)
        s.blocks.append("</details>")
    for fig_file in sorted((folder / "figures").glob("*.json")):
        s.figure(fig_file.stem.replace("_", " "), figure_from_json(fig_file.read_text()))
    return s, [c["verdict"] for c in claims]
