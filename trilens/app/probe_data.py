"""Probe curves for the app: a saved ``ProbeResult``, or layerwise probes run on a small uploaded JSON-lines file."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError
from ..probes import ProbeResult, probe_layers
from ..results import load_result
from ..text_files import read_labelled

if TYPE_CHECKING:
    from ..model import Model

MAX_PROBE_ROWS = 2000  # the page trains probes while the user waits; larger sets: `trilens probe` from a shell
PROBE_FOLDS = 3


def load_probe(path: str) -> ProbeResult:
    """A ``ProbeResult`` saved with ``.save(folder)`` (or by ``trilens probe --out``)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder; give the folder a probe result was saved to.")
    result = load_result(folder)
    if not isinstance(result, ProbeResult):
        raise InputError(f"{folder} holds a {type(result).__name__}, not a probe result.")
    return result


def run_probe(model: Model, data: bytes, label: str) -> ProbeResult:
    """Layerwise probes (with the control task) of field ``label`` in JSON lines with "text" (or "source" and
    "target") fields, three folds."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.jsonl"
        path.write_bytes(data)
        inputs, labels = read_labelled(path, label)
    if len(inputs) > MAX_PROBE_ROWS:
        raise InputError(f"{len(inputs)} rows: the app probes at most {MAX_PROBE_ROWS} while you wait; run "
                         f"`trilens probe MODEL --data FILE --label {label} --out DIR` and load its result here.")
    if len(set(map(str, labels))) < 2:
        raise InputError(f"every row has the same {label!r}; a probe needs at least two classes.")
    return probe_layers(model, inputs, labels, cv=PROBE_FOLDS, progress=False)
