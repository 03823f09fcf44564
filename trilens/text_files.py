"""Text files as users write them, read by the command line, the app and the feature data: texts (one per line, or
JSON lines with "text" or "source"/"target"), labelled JSON lines, and JSON lines in general (``json_lines``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import InputError


def json_object(line: str | bytes, where: str) -> dict[str, Any]:
    """One line of a JSON-lines file as the object it must hold; ``where`` names the line in errors."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise InputError(f"{where} is not valid JSON ({err.msg}).") from err
    if not isinstance(row, dict):
        raise InputError(f"{where} is not a JSON object; each line needs fields such as \"text\".")
    return row


def json_lines(path: Path, what: str) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every non-empty line of a JSON-lines file."""
    if not path.exists():
        raise InputError(f"{what} file {path} does not exist.")
    rows = [(i, json_object(line, f"{path}:{i}")) for i, line in enumerate(path.read_text().splitlines(), 1)
            if line.strip()]
    if not rows:
        raise InputError(f"{what} file {path} is empty.")
    return rows


def row_input(row: dict[str, Any], path: Path, line: int) -> Any:
    """The model input of one JSON line: its "text", or its ("source", "target") pair."""
    if "text" in row:
        return row["text"]
    if "source" in row and "target" in row:
        return (row["source"], row["target"])
    raise InputError(f"{path}:{line} has neither a \"text\" field nor \"source\" and \"target\" fields.")


def read_texts(path: Path) -> list[Any]:
    """Texts from a file: one per line, or JSON lines (``.jsonl``) with "text" or "source"/"target" fields."""
    if path.suffix == ".jsonl":
        return [row_input(row, path, i) for i, row in json_lines(path, "texts")]
    if not path.exists():
        raise InputError(f"texts file {path} does not exist.")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise InputError(f"texts file {path} is empty.")
    return lines


def read_plain_texts(path: Path, why: str) -> list[str]:
    """Texts that must be plain strings (no source/target pairs); ``why`` says what needs them."""
    texts = read_texts(path)
    if any(not isinstance(t, str) for t in texts):
        raise InputError(f"{why} takes plain texts (one per line, or jsonl with a \"text\" field).")
    return texts


def read_labelled(path: Path, label: str, level: str = "sentence") -> tuple[list[Any], list[Any]]:
    """(inputs, labels) from JSON lines with "text" (or "source"/"target") and the label field."""
    inputs, labels = [], []
    for i, row in json_lines(path, "data"):
        if label not in row:
            raise InputError(f"{path}:{i} has no field {label!r}; its fields: {', '.join(row)}.")
        inputs.append(row_input(row, path, i))
        if level == "token" and not isinstance(row[label], list):
            raise InputError(f"{path}:{i}: at token level {label!r} must be a list with one label per word.")
        labels.append(row[label])
    return inputs, labels
