"""A separate virtual environment with the ``gradiend`` package 0.2.3, for benchmarks/gradiend.py (built as
``peer_env.py`` builds every peer tool's venv; never a trilens dependency).

    python benchmarks/gradiend_env.py [--path benchmarks/.venv-gradiend]    # prints the venv's python

gradiend 0.2.3 asks for torch>=2.0, transformers>=4.30,<6, numpy, pandas and tqdm: it runs on the torch 2.13.0 and
transformers 5.23.0 trilens uses, so both tools load the same zoo folder with the same tokenizer.
"""

from __future__ import annotations

from pathlib import Path

from peer_env import PeerEnv, cli, ensure_env

DEFAULT_PATH = Path("benchmarks/.venv-gradiend")
REQUIREMENTS = ("gradiend==0.2.3", "transformers==5.23.0")
# `pip freeze` of a venv built this way and run with benchmarks/gradiend_runner.py (Python 3.11, Linux x86_64).
# torch is pinned without its local label: the installed 2.13.0+cpu satisfies it, so pip leaves it alone.
CONSTRAINTS = (
    "annotated-doc==0.0.7",
    "annotated-types==0.8.0",
    "anyio==4.16.0",
    "click==8.5.1",
    "filelock==4.3.1",
    "fsspec==2026.9.0",
    "gradiend==0.2.3",
    "h11==0.16.0",
    "hf-xet==1.8.0",
    "httpcore2==2.16.2",
    "httpx2==2.16.2",
    "huggingface_hub==2.4.0",
    "idna==3.20",
    "Jinja2==3.1.6",
    "markdown-it-py==4.3.0",
    "MarkupSafe==3.0.4",
    "mdurl==0.1.2",
    "mpmath==1.3.0",
    "networkx==3.6.1",
    "numpy==2.4.6",
    "packaging==26.4",
    "pandas==3.1.1",
    "pydantic==2.14.4",
    "pydantic_core==2.50.5",
    "Pygments==2.21.0",
    "python-dateutil==4.0.0",
    "PyYAML==6.0.4",
    "regex==2026.11.19",
    "rich==15.0.0",
    "safetensors==0.8.0",
    "shellingham==1.5.4",
    "sympy==1.14.0",
    "tokenizers==0.23.3",
    "torch==2.13.0",
    "tqdm==4.70.1",
    "transformers==5.23.0",
    "truststore==0.10.5",
    "typer==0.29.2",
    "typing-inspection==0.4.5",
    "typing_extensions==4.16.0",
    "tzdata==2026.6",
)
SPEC = PeerEnv("gradiend", REQUIREMENTS, CONSTRAINTS, ("gradiend", "transformers"),
               {"torch": "2.13.0", "gradiend": "0.2.3", "transformers": "5.23.0"})


def ensure_gradiend_env(path: Path = DEFAULT_PATH) -> Path:
    """Create (if needed) the gradiend venv at ``path`` and return its python."""
    return ensure_env(SPEC, path)


def main() -> None:
    cli(SPEC, DEFAULT_PATH, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
