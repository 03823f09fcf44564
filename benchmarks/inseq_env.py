"""A separate virtual environment with Inseq 0.7.1, for benchmarks that compare trilens with Inseq.

    python benchmarks/inseq_env.py [--path benchmarks/.venv-inseq]    # prints the venv's python

Inseq never goes into trilens's ``.venv``: it pins ``typeguard<=2.13.3`` and a long list of other floors. The venv is
built as ``peer_env.py`` builds every peer tool's (torch alone first, checked to be the CPU build; then the rest under
``INSEQ_CONSTRAINTS``, the exact versions that were installed and tested together). Inseq 0.7.1's metadata lists
``nvidia-*-cu11`` packages under the marker ``sys_platform == "Linux"``, which never matches (Python says ``linux``),
so they are not installed either; the check after the build makes sure.

Inseq 0.7.1 works with transformers 5.23.0 (the version trilens uses), so the two environments load the same models
with the same tokenizers (the zoo's ``TokenizersBackend`` tokenizer class exists only in transformers 5).
"""

from __future__ import annotations

from pathlib import Path

from peer_env import PeerEnv, cli, ensure_env

DEFAULT_PATH = Path("benchmarks/.venv-inseq")

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
SPEC = PeerEnv("inseq", tuple(INSEQ_REQUIREMENTS), tuple(INSEQ_CONSTRAINTS), ("inseq", "captum", "transformers", "safetensors"),
               {"torch": "2.13.0", "inseq": "0.7.1", "transformers": "5.23.0", "captum": "0.9.0", "typeguard": "2.13.3"})


def ensure_inseq_env(path: Path = DEFAULT_PATH) -> Path:
    """Create (if needed) the Inseq 0.7.1 venv at ``path`` and return its python. Install log: ``path/install.log``."""
    return ensure_env(SPEC, path)


def main() -> None:
    cli(SPEC, DEFAULT_PATH, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
