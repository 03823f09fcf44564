"""A separate virtual environment with Inseq 0.7.1, for benchmarks that compare trilens with Inseq.

    python benchmarks/inseq_env.py [--path benchmarks/.venv-inseq]    # prints the venv's python

Inseq never goes into trilens's ``.venv``: it pins ``typeguard<=2.13.3`` and a long list of other floors. The venv is
built in two steps so pip never chooses torch itself (a torch that pip picks on its own is the multi-GB CUDA build):

1. ``pip install torch==2.13.0`` alone (the CPU wheel that this project's machines keep on disk); before it, a
   ``pip install --dry-run --report`` must show no ``nvidia-*`` package and no CUDA torch, or nothing is installed.
2. Everything else with ``-c constraints.txt`` (``INSEQ_CONSTRAINTS`` below: the exact versions that were installed and
   tested together), so the torch from step 1 stays. Inseq 0.7.1's metadata lists ``nvidia-*-cu11`` packages under the
   marker ``sys_platform == "Linux"``, which never matches (Python says ``linux``), so they are not installed either;
   the check after step 2 makes sure.

Inseq 0.7.1 works with transformers 5.23.0 (the version trilens uses), so the two environments load the same models
with the same tokenizers (the zoo's ``TokenizersBackend`` tokenizer class exists only in transformers 5).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import venv
from pathlib import Path

DEFAULT_PATH = Path("benchmarks/.venv-inseq")

TORCH = "torch==2.13.0"

# What step 2 asks for; INSEQ_CONSTRAINTS fixes everything else.
INSEQ_REQUIREMENTS = [
    "inseq==0.7.1",
    "transformers[sentencepiece,tokenizers]==5.23.0",
    "captum==0.9.0",
    "safetensors==0.8.0",
]

# `pip freeze` of a venv built this way and tested with benchmarks/inseq_runner.py (Python 3.11, Linux x86_64).
# torch is pinned without its local label: the installed 2.13.0+cpu satisfies it, so pip leaves it alone.
INSEQ_CONSTRAINTS = [
    "aiohappyeyeballs==2.7.1",
    "aiohttp==3.14.5",
    "aiosignal==1.4.0",
    "annotated-doc==0.0.7",
    "annotated-types==0.8.0",
    "anyio==4.16.0",
    "attrs==26.1.0",
    "Authlib==1.9.10",
    "captum==0.9.0",
    "certifi==2026.10.19.post1",
    "cffi==2.1.1",
    "charset-normalizer==3.5.3",
    "click==8.5.1",
    "contourpy==1.3.3",
    "cryptography==50.0.2",
    "cycler==0.12.1",
    "filelock==4.3.1",
    "fonttools==4.68.0",
    "frozenlist==1.8.0",
    "fsspec==2026.9.0",
    "h11==0.16.0",
    "hf-xet==1.8.0",
    "httpcore2==2.16.2",
    "httpx2==2.16.2",
    "huggingface_hub==2.4.0",
    "idna==3.20",
    "inseq==0.7.1",
    "jaxtyping==0.3.11",
    "Jinja2==3.1.6",
    "joserfc==1.8.0",
    "kiwisolver==1.5.1",
    "markdown-it-py==4.3.0",
    "MarkupSafe==3.0.4",
    "marshmallow==4.4.0",
    "matplotlib==3.11.2",
    "mdurl==0.1.2",
    "mpmath==1.3.0",
    "multidict==7.2.1",
    "networkx==3.6.1",
    "numpy==2.4.6",
    "packaging==26.4",
    "pillow==13.0.0",
    "propcache==0.5.4",
    "protobuf==7.36.2",
    "pycparser==3.12",
    "pydantic==2.14.4",
    "pydantic_core==2.50.5",
    "Pygments==2.21.0",
    "pyparsing==3.3.3",
    "python-dateutil==4.0.0",
    "PyYAML==6.0.4",
    "regex==2026.11.19",
    "requests==2.34.2",
    "rich==15.0.0",
    "safetensors==0.8.0",
    "sentencepiece==0.2.3",
    "setuptools==84.2.1",
    "shellingham==1.5.4",
    "sympy==1.14.0",
    "tokenizers==0.23.3",
    "torch==2.13.0",
    "tornado==6.6.1",
    "tqdm==4.70.1",
    "transformers==5.23.0",
    "treescope==0.1.10",
    "truststore==0.10.5",
    "typeguard==2.13.3",
    "typer==0.29.2",
    "typing-inspection==0.4.5",
    "typing_extensions==4.16.0",
    "tzdata==2026.6",
    "urllib3==2.8.0",
    "wadler_lindig==0.1.8",
    "yarl==1.25.1",
]

# Checked after every build: the imports the runner needs and the versions it was tested with.
_CHECK = """
import json, importlib.metadata as md, torch
import inseq, captum, transformers, safetensors  # noqa: F401
names = [d.metadata["Name"].lower() for d in md.distributions()]
print(json.dumps({
    "torch": torch.__version__, "cuda": torch.version.cuda,
    "inseq": md.version("inseq"), "transformers": transformers.__version__, "captum": captum.__version__,
    "typeguard": md.version("typeguard"), "nvidia": sorted(n for n in names if n.startswith("nvidia")),
}))
"""
_EXPECTED = {"torch": "2.13.0", "inseq": "0.7.1", "transformers": "5.23.0", "captum": "0.9.0", "typeguard": "2.13.3"}
_MARKER = ".trilens-inseq-ok"


def _python(path: Path) -> Path:
    return path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _run(cmd: list[str], log: Path) -> None:
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(map(str, cmd))}\n")
        out.flush()
        done = subprocess.run(cmd, check=False, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({done.returncode}); see {log}")


def _check(python: Path) -> dict:
    """The venv's versions; raises if they are not the tested ones or a CUDA torch / nvidia package is there."""
    done = subprocess.run([str(python), "-c", _CHECK], check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the Inseq venv does not import: {done.stderr.strip()[-2000:]}")
    found = json.loads(done.stdout.strip().splitlines()[-1])
    wrong = {k: found[k] for k, v in _EXPECTED.items() if found[k].split("+")[0] != v}
    if wrong or found["cuda"] is not None or found["nvidia"]:
        raise RuntimeError(f"the Inseq venv is not the tested one: {found} (expected {_EXPECTED}, CPU torch)")
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


def ensure_inseq_env(path: Path = DEFAULT_PATH) -> Path:
    """Create (if needed) the Inseq 0.7.1 venv at ``path`` and return its python. Install log: ``path/install.log``."""
    path = Path(path).absolute()
    python = _python(path)
    marker = path / _MARKER
    wanted = "\n".join([TORCH, *INSEQ_REQUIREMENTS, *INSEQ_CONSTRAINTS])
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    if not python.exists():
        venv.EnvBuilder(with_pip=True, clear=path.exists()).create(path)
    log = path / "install.log"
    # Step 1: torch alone, checked first with a dry run.
    _torch_dry_run(python, log)
    _run([str(python), "-m", "pip", "install", TORCH], log)
    # Step 2: everything else, with torch held by the constraints.
    constraints = path / "constraints.txt"
    constraints.write_text("\n".join(INSEQ_CONSTRAINTS) + "\n")
    _run([str(python), "-m", "pip", "install", "-c", str(constraints), *INSEQ_REQUIREMENTS], log)
    _check(python)
    marker.write_text(wanted)
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--check", action="store_true", help="also print the venv's versions")
    args = parser.parse_args()
    python = ensure_inseq_env(args.path)
    if args.check:
        print(json.dumps(_check(python)), file=sys.stderr)
    print(python)


if __name__ == "__main__":
    main()
