"""A data source's model inputs read on demand: ``StreamedRows`` is a sequence (length, index, slice, iteration) over
the rows of a ``datasets.Dataset`` or ``save_to_disk`` folder (memory-mapped Arrow), a Parquet file (one row group at
a time) or a JSON-lines file (a byte offset per row, each slice read from disk), so a corpus far larger than memory can
go to the activation store. CSV and JSON-array files are read whole (they have no row index to seek by).

It pickles as the source's path and offsets, so Ray workers open the source themselves rather than receiving the rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import InputError
from .sources import data_file, open_dataset, read_rows
from .text_files import json_object

CHUNK = 4096  # rows per read when iterating


class StreamedRows(Sequence):
    """The inputs of a source's ``text_column`` (with ``target_column``: (source, target) pairs), read when asked."""

    def __init__(self, source: Any, *, split: str | None = None, text_column: str = "text",
                 target_column: str | None = None):
        self.columns = [text_column] + ([target_column] if target_column else [])
        self.text_column, self.target_column = text_column, target_column
        self.rows_read = 0  # rows taken from the source so far (for tests and progress)
        self._group: tuple[int, list[Any]] | None = None  # the Parquet row group read last
        path = data_file(source)
        if path is None:
            self.kind, self._data = "dataset", open_dataset(source, split)
            have, self._n = list(self._data.column_names), self._data.num_rows
        elif path.suffix == ".parquet":
            import pyarrow.parquet as pq

            self.kind, self.path = "parquet", path
            meta = pq.ParquetFile(path).metadata
            have, self._n = list(pq.read_schema(path).names), meta.num_rows
            sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
            self._starts = [sum(sizes[:g]) for g in range(len(sizes) + 1)]
        elif path.suffix == ".jsonl" or path.suffix == ".json" and not _starts_with_bracket(path):
            self.kind, self.path = "jsonl", path
            self._offsets, have = _line_offsets(path)
            self._n = len(self._offsets)
        else:  # CSV, a JSON array: no row index to seek by
            self.kind = "memory"
            rows = read_rows(source, split=split, text_column=text_column, target_column=target_column)
            self._rows, have, self._n = rows.inputs, rows.columns, len(rows.inputs)
        missing = [c for c in self.columns if c not in have]
        if missing:
            raise InputError(f"the data has no column {missing[0]!r}; its columns are {', '.join(have) or 'none'}. Name "
                             "the right one (text_column= / --text-column).")
        if self._n == 0:
            raise InputError("the data has no rows.")

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            start, stop, step = index.indices(self._n)
            rows = self._read(start, max(start, stop))
            return rows[::step] if step != 1 else rows
        i = index + self._n if index < 0 else index
        if not 0 <= i < self._n:
            raise IndexError(f"row {index} of {self._n}")
        return self._read(i, i + 1)[0]

    def __iter__(self) -> Iterator[Any]:
        for start in range(0, self._n, CHUNK):
            yield from self._read(start, min(self._n, start + CHUNK))

    def _read(self, start: int, stop: int) -> list[Any]:
        if start >= stop:
            return []
        if self.kind == "memory":
            values = self._rows[start:stop]
        elif self.kind == "dataset":
            part = self._data[start:stop]
            values = self._inputs(start, [part[c] for c in self.columns])
        elif self.kind == "parquet":
            values = self._parquet(start, stop)
        else:
            values = self._jsonl(start, stop)
        self.rows_read += len(values)
        return values

    def _inputs(self, start: int, columns: list[list[Any]]) -> list[Any]:
        for j, t in enumerate(columns[0]):
            if not isinstance(t, str):
                raise InputError(f"row {start + j} (from 0): column {self.text_column!r} holds a {type(t).__name__}, "
                                 "not a text.")
        return list(zip(*columns)) if self.target_column else list(columns[0])

    def _parquet(self, start: int, stop: int) -> list[Any]:
        import bisect

        import pyarrow.parquet as pq

        out: list[Any] = []
        g = bisect.bisect_right(self._starts, start) - 1
        while start < stop:
            if self._group is None or self._group[0] != g:
                table = pq.ParquetFile(self.path).read_row_group(g, columns=self.columns)
                self._group = (g, self._inputs(self._starts[g], [table.column(c).to_pylist() for c in self.columns]))
            end = min(stop, self._starts[g + 1])
            out += self._group[1][start - self._starts[g]:end - self._starts[g]]
            start, g = end, g + 1
        return out

    def _jsonl(self, start: int, stop: int) -> list[Any]:
        rows = []
        with open(self.path, "rb") as f:
            f.seek(self._offsets[start])
            while len(rows) < stop - start:
                line = f.readline()
                if line.strip():
                    rows.append(line)
        objects = []
        for j, line in enumerate(rows):
            row = json_object(line, f"{self.path}: row {start + j + 1}")
            missing = [c for c in self.columns if c not in row]
            if missing:
                raise InputError(f"{self.path}: row {start + j + 1} has no {missing[0]!r} field.")
            objects.append(row)
        return self._inputs(start, [[o[c] for o in objects] for c in self.columns])

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_group"] = None
        return state

    def __repr__(self) -> str:
        return f"StreamedRows({self.kind}, {self._n} rows, columns {self.columns})"


def _starts_with_bracket(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(256).lstrip().startswith(b"[")


def _line_offsets(path: Path) -> tuple[list[int], list[str]]:
    """The byte offset of every non-empty line, and the fields of the first row."""
    offsets: list[int] = []
    first: list[str] = []
    with open(path, "rb") as f:
        pos = 0
        for line in f:
            if line.strip():
                if not offsets:
                    first = list(json_object(line, f"{path}: row 1"))
                offsets.append(pos)
            pos += len(line)
    return offsets, first

