"""The folder a training run writes (``trilens gradiend train --out``) and that ``encode``, ``rewrite`` and the app
read: ``gradiend/`` (the trained GRADIEND), ``encodings/`` (held-out and neutral texts), ``data.jsonl`` (the rows) and,
where scored, ``rewrite_grid/``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..results import load_result
from .data import FeatureData
from .encodings import EncodingResult
from .gradiend import Gradiend
from .rewrite_grid import RewriteGrid

GRADIEND_DIR, ENCODINGS_DIR, GRID_DIR, DATA_FILE = "gradiend", "encodings", "rewrite_grid", "data.jsonl"


@dataclass
class FeatureFolder:
    """A training folder's contents (``encodings``, ``grid``, ``data_path``: None where absent)."""

    gradiend: Gradiend
    encodings: EncodingResult | None
    grid: RewriteGrid | None
    data_path: Path | None


def write_feature_folder(out: str | os.PathLike, gradiend: Gradiend, data: FeatureData,
                         encodings: EncodingResult | None = None, grid: RewriteGrid | None = None) -> Path:
    out = Path(out)
    gradiend.save(out / GRADIEND_DIR, figure=True)
    data.write_jsonl(out / DATA_FILE)
    for part, name in ((encodings, ENCODINGS_DIR), (grid, GRID_DIR)):
        if part is not None:
            part.save(out / name, figure=True)
    return out


def _optional(path: Path, cls: type) -> Any:
    if not path.is_dir():
        return None
    result = load_result(path)
    return result if isinstance(result, cls) else None


def read_feature_folder(path: str | os.PathLike) -> FeatureFolder:
    """A training folder, or a saved ``Gradiend`` on its own."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder: give the folder `trilens gradiend train --out` wrote.")
    inner = folder / GRADIEND_DIR
    result = load_result(inner if inner.is_dir() else folder)
    if not isinstance(result, Gradiend):
        raise InputError(f"{folder} holds a {type(result).__name__}, not a GRADIEND.")
    if not inner.is_dir():
        return FeatureFolder(result, None, None, None)
    data = folder / DATA_FILE
    return FeatureFolder(result, _optional(folder / ENCODINGS_DIR, EncodingResult),
                         _optional(folder / GRID_DIR, RewriteGrid), data if data.is_file() else None)
