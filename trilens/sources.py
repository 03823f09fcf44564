"""Inputs as users keep them: a Hugging Face ``datasets.Dataset`` (or a ``DatasetDict`` and a split), a folder written
by ``save_to_disk``, a Parquet file, JSON lines or CSV. ``read_rows`` gives each row's model input (its text, or its
(source, target) pair) and, where asked, its label; a missing column is refused with the columns there are.

Files are read with pyarrow (Parquet, CSV) or line by line (JSON lines), so nothing is written to the ``datasets``
cache; ``datasets`` itself is needed only for its own objects and folders.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError
from .text_files import json_lines

FILE_KINDS = (".parquet", ".jsonl", ".json", ".csv")


@dataclass
class Rows:
    """The rows of a source: ``inputs`` (texts or (source, target) pairs), ``labels`` (None unless a label column was
    named) and the source's ``columns``."""

    inputs: list[Any]
    labels: list[Any] | None
    columns: list[str]


def is_source(obj: Any) -> bool:
    """Whether ``obj`` is a data source ``read_rows`` reads (rather than a list of texts): a ``datasets`` object or a
    path (``os.PathLike``; a plain string is a text)."""
    return isinstance(obj, os.PathLike) or type(obj).__module__.startswith("datasets.")


def read_columns(source: Any, names: list[str], *, split: str | None = None,
                 also: Callable[[str], bool] | None = None) -> dict[str, list[Any]]:
    """The values of columns ``names`` (each a list, one value per row) of a data source, and of every other column
    the source has for which ``also(column)`` holds (the source is opened once)."""
    columns, read = _open(source, split)
    extra = [c for c in columns if also is not None and c not in names and also(c)]
    return _read_checked(columns, read, list(names) + extra)


def _read_checked(columns: list[str], read: Callable[[list[str]], dict[str, list[Any]]], names: list[str]) -> dict[str, list[Any]]:
    for name in names:
        if name not in columns:
            raise InputError(f"the data has no column {name!r}; its columns are {', '.join(columns) or 'none'}. Name "
                             "the right one (text_column= / --text-column, label_column= / --label-column).")
    return read(names)


def read_rows(source: Any, *, split: str | None = None, text_column: str = "text", target_column: str | None = None,
              label_column: str | None = None) -> Rows:
    """Each row's model input (``text_column``; with ``target_column``, the (source, target) pair of an
    encoder-decoder) and label (``label_column``)."""
    columns, read = _open(source, split)
    names = [text_column] + [c for c in (target_column, label_column) if c]
    values = _read_checked(columns, read, names)
    texts = values[text_column]
    if any(not isinstance(t, str) for t in texts):
        raise InputError(f"column {text_column!r} holds {type(next(t for t in texts if not isinstance(t, str))).__name__}"
                         " values, not texts.")
    inputs = list(zip(texts, values[target_column])) if target_column else list(texts)
    if not inputs:
        raise InputError("the data has no rows.")
    return Rows(inputs, values[label_column] if label_column else None, columns)


def open_dataset(source: Any, split: str | None) -> Any:
    """A ``datasets.Dataset`` from a dataset, a dataset dict (and ``split``) or a ``save_to_disk`` folder."""
    import datasets

    if isinstance(source, (str, os.PathLike)):
        try:
            source = datasets.load_from_disk(str(source))
        except FileNotFoundError as err:
            raise InputError(f"{source} is a folder, but not one written by datasets' save_to_disk ({err}).") from err
    if isinstance(source, datasets.DatasetDict):
        splits = list(source)
        if split is None and len(splits) == 1:
            split = splits[0]
        if split not in splits:
            raise InputError(f"the data has the splits {', '.join(splits)}: choose one (split= / --split)"
                             + (f", not {split!r}." if split else "."))
        source = source[split]
    if not isinstance(source, datasets.Dataset):
        raise InputError(f"a {type(source).__name__} is not a data source trilens reads: pass a datasets.Dataset, a "
                         f"DatasetDict, a save_to_disk folder or a file ({', '.join(FILE_KINDS)}).")
    return source


def data_file(source: Any) -> Path | None:
    if not isinstance(source, (str, os.PathLike)):
        return None
    path = Path(source)
    if not path.exists():
        raise InputError(f"{path} does not exist.")
    if path.is_dir():
        return None
    if path.suffix not in FILE_KINDS:
        raise InputError(f"{path} is not a data file trilens reads ({', '.join(FILE_KINDS)}, or a save_to_disk folder).")
    return path


def _open(source: Any, split: str | None) -> tuple[list[str], Callable[[list[str]], dict[str, list[Any]]]]:
    """The source's columns, and a reader of chosen columns; each source is opened once (a Parquet file's columns
    come from its schema, and only the chosen ones are read)."""
    path = data_file(source)
    if path is None:
        data = open_dataset(source, split)
        return list(data.column_names), lambda names: {n: list(data[n]) for n in names}
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        def parquet(names: list[str]) -> dict[str, list[Any]]:
            table = pq.read_table(path, columns=names)
            return {n: table.column(n).to_pylist() for n in names}

        return list(pq.read_schema(path).names), parquet
    if path.suffix == ".csv":
        table = _csv(path)
        return list(table.column_names), lambda names: {n: table.column(n).to_pylist() for n in names}
    rows = _json_rows(path)

    def json_columns(names: list[str]) -> dict[str, list[Any]]:
        for i, row in enumerate(rows, 1):
            missing = [n for n in names if n not in row]
            if missing:
                raise InputError(f"{path}: row {i} has no {missing[0]!r} field.")
        return {n: [row[n] for row in rows] for n in names}

    return (list(rows[0]) if rows else []), json_columns


def _csv(path: Path) -> Any:
    import pyarrow.csv as pcsv

    return pcsv.read_csv(path)


def _json_rows(path: Path) -> list[dict[str, Any]]:
    """The objects of a JSON-lines file (or of a JSON file holding one list of objects)."""
    text = path.read_text()
    if not (path.suffix == ".json" and text.lstrip().startswith("[")):
        return [row for _, row in json_lines(path, "data")]
    rows = json.loads(text)
    if any(not isinstance(r, dict) for r in rows):
        raise InputError(f"{path}: every row must be a JSON object with named fields, such as \"text\".")
    return rows


def model_inputs(source: Any, family: str, *, split: str | None = None, text_column: str = "text",
                 target_column: str | None = None) -> tuple[list[Any], list[Any] | None]:
    """(inputs, targets) for an analysis that takes inputs and optional targets: an encoder-decoder reads
    (source, target) pairs and no separate targets; other models read the texts, and the targets (a continuation of
    a prompt, an encoder's mask token) from ``target_column``."""
    rows = read_rows(source, split=split, text_column=text_column, target_column=target_column)
    if target_column is None or family == "encoder-decoder":
        return rows.inputs, None
    return [x for x, _ in rows.inputs], [t for _, t in rows.inputs]


def read_pairs(source: Any, *, split: str | None = None, clean_column: str = "clean",
               corrupted_column: str = "corrupted") -> tuple[list[Any], list[Any]]:
    """(clean, corrupted) inputs for patching, one pair per row of a data source."""
    values = read_columns(source, [clean_column, corrupted_column], split=split)
    if not values[clean_column]:
        raise InputError("the data has no rows.")
    return values[clean_column], values[corrupted_column]

