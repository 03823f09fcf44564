"""Separate virtual environments for the peer tools a benchmark compares trilens with (Inseq, the ``gradiend``
package), never trilens dependencies. Each is built in two steps so pip never chooses torch itself (a torch that pip
picks on its own is the multi-GB CUDA build):

1. ``pip install torch==2.13.0`` alone (the CPU wheel that this project's machines keep on disk); before it, a
   ``pip install --dry-run --report`` must show no ``nvidia-*`` package and no CUDA torch, or nothing is installed.
2. Everything else with ``-c constraints.txt`` (the exact versions that were installed and tested together), so the
   torch from step 1 stays; a check after it imports the tool and compares the versions.
"""

from __future__ import annotations

import json
import os
import subprocess
import venv
from dataclasses import dataclass
from pathlib import Path

TORCH = "torch==2.13.0"


@dataclass(frozen=True)
class PeerEnv:
    """What one peer tool's venv holds: ``requirements`` (step 2), ``constraints`` (a tested ``pip freeze``); the
    check after every build imports ``imports`` and compares the installed versions with ``expected``."""

    name: str
    requirements: tuple[str, ...]
    constraints: tuple[str, ...]
    imports: tuple[str, ...]
    expected: dict[str, str]

    @property
    def check(self) -> str:
        """A script that imports the tool and prints the versions, CUDA and any nvidia package as one JSON object."""
        return (f"import json, importlib.metadata as md, torch\nimport {', '.join(self.imports)}\n"
                "names = [d.metadata['Name'].lower() for d in md.distributions()]\n"
                f"print(json.dumps({{**{{n: md.version(n) for n in {sorted(self.expected)!r}}}, "
                "'cuda': torch.version.cuda, 'nvidia': sorted(n for n in names if n.startswith('nvidia'))}))\n")


def python_of(path: Path) -> Path:
    return path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _run(cmd: list[str], log: Path) -> None:
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(map(str, cmd))}\n")
        out.flush()
        done = subprocess.run(cmd, check=False, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({done.returncode}); see {log}")


def check_env(spec: PeerEnv, python: Path) -> dict:
    """The venv's versions; raises if they are not the tested ones or a CUDA torch / nvidia package is there."""
    done = subprocess.run([str(python), "-c", spec.check], check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the {spec.name} venv does not import: {done.stderr.strip()[-2000:]}")
    found = json.loads(done.stdout.strip().splitlines()[-1])
    wrong = {k: found[k] for k, v in spec.expected.items() if found[k].split("+")[0] != v}
    if wrong or found["cuda"] is not None or found["nvidia"]:
        raise RuntimeError(f"the {spec.name} venv is not the tested one: {found} (expected {spec.expected}, CPU torch)")
    return found


def _torch_dry_run(python: Path, log: Path) -> None:
    """Refuse to install torch if pip would bring a CUDA build (nvidia-* packages) for it."""
    report = log.parent / "torch-dry-run.json"
    _run([str(python), "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report), TORCH], log)
    plan = json.loads(report.read_text())["install"]
    names = {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in plan}
    cuda = sorted(n for n in names if n.startswith("nvidia"))
    if cuda:
        raise RuntimeError(
            f"pip would install a CUDA torch ({names.get('torch')}, with {cuda}); refusing. Make a CPU wheel of"
            f" {TORCH} reachable (e.g. PIP_FIND_LINKS or the PyTorch CPU index) and run again."
        )


def ensure_env(spec: PeerEnv, path: Path) -> Path:
    """Create (if needed) ``spec``'s venv at ``path`` and return its python. Install log: ``path/install.log``."""
    path = Path(path).absolute()
    python = python_of(path)
    marker = path / f".trilens-{spec.name}-ok"
    wanted = "\n".join([TORCH, *spec.requirements, *spec.constraints])
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    if not python.exists():
        venv.EnvBuilder(with_pip=True, clear=path.exists()).create(path)
    log = path / "install.log"
    _torch_dry_run(python, log)
    _run([str(python), "-m", "pip", "install", TORCH], log)
    constraints = path / "constraints.txt"
    constraints.write_text("\n".join(spec.constraints) + "\n")
    _run([str(python), "-m", "pip", "install", "-c", str(constraints), *spec.requirements], log)
    check_env(spec, python)
    marker.write_text(wanted)
    return python


def cli(spec: PeerEnv, default_path: Path, description: str) -> None:
    """``python benchmarks/<tool>_env.py [--path P] [--check]``: build the venv if needed, print its python."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--path", type=Path, default=default_path)
    parser.add_argument("--check", action="store_true", help="also print the venv's versions")
    args = parser.parse_args()
    python = ensure_env(spec, args.path)
    if args.check:
        print(json.dumps(check_env(spec, python)), file=sys.stderr)
    print(python)
