"""Scripted studies: ``studies/<name>/`` holds ``config.json``, ``study.py`` (a ``run(ctx)`` function) and a README.

``run_study`` loads the study, merges its config with overrides, gives it a ``StudyContext`` to
record metrics (JSON), figures (HTML), tables (CSV) and summary lines, and writes them all into
the output folder atomically: a study that fails leaves nothing half-written.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import atomic_dir
from .errors import InputError, closest

STUDIES_DIR = Path(__file__).resolve().parents[1] / "studies"
VERDICTS = ("reproduced", "not reproduced", "not comparable")


def studies_dir(path: str | Path | None = None) -> Path:
    """The folder holding the studies: ``path``, else the source checkout's ``studies/``, else ./studies."""
    for candidate in ([Path(path)] if path else [STUDIES_DIR, Path.cwd() / "studies"]):
        if candidate.is_dir():
            return candidate
    raise InputError(f"no studies folder at {path or STUDIES_DIR}: studies ship with the source checkout "
                     "(git clone the trilens repository) — or pass --studies-dir DIR.")


def list_studies(path: str | Path | None = None) -> dict[str, str]:
    """Study name -> the first line of its README (what it asks)."""
    root = studies_dir(path)
    out = {}
    for d in sorted(p for p in root.iterdir() if (p / "study.py").exists()):
        readme = d / "README.md"
        first = next((ln.lstrip("# ").strip() for ln in readme.read_text().splitlines() if ln.strip()), "") if readme.exists() else ""
        out[d.name] = first
    return out


@dataclass
class StudyContext:
    """What a study's ``run(ctx)`` gets: its config, and places to put results."""

    name: str
    config: dict[str, Any]
    out: Path
    progress: bool = True
    metrics: dict[str, Any] = field(default_factory=dict)
    summary: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    claims: list[dict[str, str]] = field(default_factory=list)

    def metric(self, key: str, value: Any) -> None:
        """Record a JSON-serialisable result under ``key`` (written to metrics.json)."""
        json.dumps(value)  # fail now, inside the study, rather than at the end
        self.metrics[key] = value

    def figure(self, name: str, fig: Any) -> None:
        """Save a plotly figure as ``figures/<name>.html`` (self-contained, works offline) and as plotly JSON
        (``figures/<name>.json``, what the report of all studies embeds)."""
        from .atomic import atomic_write_text
        from .viz import write_html

        write_html(fig, self.out / "figures" / f"{name}.html")
        atomic_write_text(self.out / "figures" / f"{name}.json", fig.to_json())
        self.figures.append(name)

    def claim(self, claim: str, *, paper: str, measured: str, verdict: str, note: str = "") -> None:
        """Set a founding paper's claim against what this run measured (``measured``: the number, in words), with a
        ``verdict`` (one of ``VERDICTS``) that the study computes from its measurement; the report of all studies
        lists them."""
        if verdict not in VERDICTS:
            raise InputError(f"a verdict is one of {', '.join(VERDICTS)}, not {verdict!r}.")
        self.claims.append({"paper": paper, "claim": claim, "measured": measured, "verdict": verdict, "note": note})

    def table(self, name: str, frame: Any) -> None:
        """Save a pandas frame as ``tables/<name>.csv``."""
        (self.out / "tables").mkdir(exist_ok=True)
        frame.to_csv(self.out / "tables" / f"{name}.csv", index=False)

    def say(self, line: str = "") -> None:
        """Add a line to the summary (printed by the CLI, saved as summary.md)."""
        self.summary.append(line)


def _load_module(folder: Path) -> Any:
    name = f"trilens_study_{folder.name}"
    spec = importlib.util.spec_from_file_location(name, folder / "study.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # what dataclasses and pickling look a module up by while it runs
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    if not callable(getattr(module, "run", None)):
        raise InputError(f"{folder / 'study.py'} has no run(ctx) function.")
    return module


def study_config(name: str, *, quick: bool = False, overrides: dict[str, Any] | None = None,
                 path: str | Path | None = None) -> dict[str, Any]:
    """The study's config.json, with its ``quick`` section applied when ``quick`` and then ``overrides``."""
    root = studies_dir(path)
    folder = root / name
    if not (folder / "study.py").exists():
        known = list(list_studies(root))
        hints = closest(name, known)
        raise InputError(f"no study named {name!r}" + (f" (did you mean {hints[0]!r}?)" if hints else "")
                         + f"; studies: {', '.join(known) or 'none'}.")
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}
    quick_part = config.pop("quick", {})
    if quick:
        config.update(quick_part)
    for key, value in (overrides or {}).items():
        if key not in config:
            raise InputError(f"study {name!r} has no setting {key!r}; its settings: {', '.join(sorted(config))}.")
        config[key] = value
    return config


def study_command(name: str, quick: bool, overrides: dict[str, Any] | None) -> str:
    """The command line that runs this study with these settings again."""
    sets = " ".join(f"--set {k}={json.dumps(v, separators=(',', ':'))}" for k, v in (overrides or {}).items())
    return " ".join(p for p in ("trilens study run", name, "--quick" if quick else "", sets) if p)


def versions() -> dict[str, str]:
    """The versions a study's numbers depend on."""
    import platform

    import torch
    import transformers

    from .version import __version__

    out = {"trilens": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "transformers": transformers.__version__}
    from importlib.metadata import PackageNotFoundError, version

    try:
        out["transformer-lens"] = version("transformer-lens")
    except PackageNotFoundError:
        pass
    return out


def run_study(name: str, out: str | Path, *, quick: bool = False, overrides: dict[str, Any] | None = None,
              path: str | Path | None = None, progress: bool = True, overwrite: bool = False) -> StudyContext:
    """Run study ``name`` and write metrics.json, figures/*.html, tables/*.csv and summary.md into ``out``."""
    config = study_config(name, quick=quick, overrides=overrides, path=path)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out} is not empty: choose another --out or pass --overwrite.")
    module = _load_module(studies_dir(path) / name)
    start = time.perf_counter()
    with atomic_dir(out) as tmp:
        ctx = StudyContext(name=name, config=config, out=tmp, progress=progress)
        module.run(ctx)
        seconds = round(time.perf_counter() - start, 1)
        (tmp / "metrics.json").write_text(json.dumps({
            "study": name, "config": config, "quick": quick, "seconds": seconds, "metrics": ctx.metrics,
            "claims": ctx.claims, "command": study_command(name, quick, overrides), "versions": versions()}, indent=1))
        (tmp / "summary.md").write_text(f"# Study {name}\n\n" + "\n".join(ctx.summary) + "\n")
    ctx.out = out
    return ctx
