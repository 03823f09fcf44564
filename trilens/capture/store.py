"""``ActivationStore``: activations on disk as safetensors shards + JSON, read back memory-mapped.

Layout of a store folder::

    capture.json              what was captured (model fingerprint, sites, dtype, texts hash, sharding)
    shard-00000.safetensors   per-site rows [n_tokens, ...] for a block of texts, padding dropped
    shard-00000.json          that shard's texts, token counts per stack, byte size and sha256
    manifest.json             everything above merged, once every shard exists
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_write_text
from ..errors import SiteError, StoreError, closest

FORMAT = "trilens.ActivationStore/1"
_NP_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I32": np.int32, "I64": np.int64}


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` via a temporary file and a rename, so readers never see half a file."""
    atomic_write_text(path, json.dumps(data, indent=1))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shard_name(k: int) -> str:
    return f"shard-{k:05d}"


def _header(path: Path) -> tuple[int, dict[str, Any]]:
    """(data start offset, tensor table) of a safetensors file; errors name the file."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or n > 100_000_000:
                raise ValueError("bad header length")
            table = json.loads(f.read(n))
    except (OSError, ValueError) as err:
        raise StoreError(f"shard {path.name} in {path.parent} is unreadable or corrupted ({err}); "
                         "delete it and run the capture again with resume=True.") from err
    table.pop("__metadata__", None)
    return 8 + n, table


def merge(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    """Merge ``capture.json`` and every shard's record into ``manifest.json`` once all shards exist.

    Returns the manifest, or None while shards (from other ``--shard i/n`` parts) are missing.
    """
    out = Path(out_dir)
    spec_file = out / "capture.json"
    if not spec_file.exists():
        raise StoreError(f"{out} holds no activation store (no capture.json).")
    spec = json.loads(spec_file.read_text())
    records = []
    for k in range(spec["n_shards"]):
        rec_file = out / f"{shard_name(k)}.json"
        if not rec_file.exists():
            return None
        records.append(json.loads(rec_file.read_text()))
    offsets: dict[str, list[int]] = {}
    for stack in spec["stacks"]:
        lengths = [n for rec in records for n in rec["lengths"][stack]]
        offsets[stack] = np.concatenate([[0], np.cumsum(lengths)]).astype(int).tolist()
    manifest = {**spec, "offsets": offsets, "shards": records,
                "n_tokens": {s: o[-1] for s, o in offsets.items()}}
    write_json_atomic(out / "manifest.json", manifest)
    return manifest


class ActivationStore:
    """Read a store written by ``capture_dataset``: by site or by kind and layer, as torch or numpy."""

    def __init__(self, out_dir: str | os.PathLike):
        self.path = Path(out_dir)
        manifest_file = self.path / "manifest.json"
        if manifest_file.exists():
            self.manifest = json.loads(manifest_file.read_text())
        else:
            merged = merge(self.path)
            if merged is None:
                spec = json.loads((self.path / "capture.json").read_text())
                missing = [k for k in range(spec["n_shards"]) if not (self.path / f"{shard_name(k)}.json").exists()]
                raise StoreError(f"{self.path} is incomplete: shards {missing[:10]} are missing. "
                                 "Run the remaining --shard parts (or capture_dataset with resume=True).")
            self.manifest = merged
        if self.manifest.get("format") != FORMAT:
            raise StoreError(f"{self.path} holds a store of format {self.manifest.get('format')!r}, not {FORMAT!r}.")
        for rec in self.manifest["shards"]:  # cheap truncation check on open; verify() hashes
            f = self.path / rec["file"]
            if not f.exists() or f.stat().st_size != rec["bytes"]:
                size = f.stat().st_size if f.exists() else "missing"
                raise StoreError(f"shard {rec['file']} in {self.path} is truncated or missing "
                                 f"({size} bytes, expected {rec['bytes']}); delete it and resume the capture.")

    # -- facts -----------------------------------------------------------------------------------
    @property
    def sites(self) -> dict[str, dict[str, Any]]:
        return self.manifest["sites"]

    @property
    def n_texts(self) -> int:
        return self.manifest["n_texts"]

    def n_tokens(self, stack: str | None = None) -> int:
        return self.manifest["n_tokens"][self._stack(stack)]

    def offsets(self, stack: str | None = None) -> list[int]:
        """Token offsets per text: text i is rows ``offsets[i]:offsets[i + 1]``."""
        return self.manifest["offsets"][self._stack(stack)]

    def _stack(self, stack: str | None) -> str:
        stacks = self.manifest["stacks"]
        if stack is None:
            if len(stacks) != 1:
                raise SiteError(f"this store has stacks {stacks}: pass stack=.")
            return stacks[0]
        if stack not in stacks:
            raise SiteError(f"this store has no {stack!r} stack; it has {stacks}.")
        return stack

    def site_name(self, site: str, layer: int | None = None, stack: str | None = None) -> str:
        """A stored hook name from a name, or from a kind with ``layer`` (and ``stack``)."""
        if site in self.sites and layer is None:
            return site
        hits = [n for n, s in self.sites.items() if s["kind"] == site and (layer is None or s["layer"] == layer)
                and (stack is None or s["stack"] == stack)]
        if len(hits) == 1:
            return hits[0]
        hint = closest(site, list(self.sites))
        raise SiteError(f"{site!r}" + (f" at layer {layer}" if layer is not None else "")
                        + (" matches several stored sites: pass layer= and stack=." if hits else " is not in this store.")
                        + (f" Stored: {', '.join(hint or list(self.sites)[:6])}." if not hits else ""))

    # -- reading ---------------------------------------------------------------------------------
    def _memmap(self, rec: dict[str, Any], key: str) -> np.ndarray:
        path = self.path / rec["file"]
        start, table = _header(path)
        if key not in table:
            raise StoreError(f"shard {rec['file']} has no tensor {key!r}; the store is corrupted.")
        entry = table[key]
        if entry["dtype"] not in _NP_DTYPES:
            raise StoreError(f"{key} is stored as {entry['dtype']}, which numpy cannot map; read it with as_='torch'.")
        begin, _ = entry["data_offsets"]
        shape = tuple(entry["shape"])
        if 0 in shape:
            return np.zeros(shape, dtype=_NP_DTYPES[entry["dtype"]])
        return np.memmap(path, dtype=_NP_DTYPES[entry["dtype"]], mode="r", offset=start + begin, shape=shape)

    def _convert(self, arr: np.ndarray, as_: str) -> Any:
        if as_ == "numpy":
            return arr
        if as_ == "torch":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # read-only memory map: torch warns it is not writable
                return torch.from_numpy(arr)
        raise StoreError(f"as_ must be 'torch' or 'numpy', not {as_!r}.")

    def iter_shards(self, site: str, *, layer: int | None = None, stack: str | None = None, as_: str = "torch") -> Iterator[Any]:
        """Per-shard memory-mapped rows of one site, in text order (bounded memory)."""
        name = self.site_name(site, layer, stack)
        for rec in self.manifest["shards"]:
            yield self._convert(self._memmap(rec, f"act/{name}"), as_)

    def read(self, site: str, *, layer: int | None = None, stack: str | None = None, as_: str = "torch") -> Any:
        """All rows ``[n_tokens, ...]`` of one site (a memory map when the store has one shard)."""
        parts = [self._memmap(rec, f"act/{self.site_name(site, layer, stack)}") for rec in self.manifest["shards"]]
        arr = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return self._convert(arr, as_)

    def ids(self, stack: str | None = None, *, as_: str = "torch") -> Any:
        """The token id of every stored row of ``stack``."""
        stack = self._stack(stack)
        parts = [self._memmap(rec, f"ids/{stack}") for rec in self.manifest["shards"]]
        return self._convert(parts[0] if len(parts) == 1 else np.concatenate(parts), as_)

    def text(self, i: int, site: str, *, layer: int | None = None, stack: str | None = None, as_: str = "torch") -> Any:
        """The rows of text ``i`` for one site."""
        name = self.site_name(site, layer, stack)
        st = self.sites[name]["stack"]
        if not 0 <= i < self.n_texts:
            raise StoreError(f"text {i} does not exist; this store holds {self.n_texts} texts.")
        for rec in self.manifest["shards"]:
            lo, hi = rec["texts"]
            if lo <= i < hi:
                lengths = rec["lengths"][st]
                start = sum(lengths[: i - lo])
                return self._convert(self._memmap(rec, f"act/{name}")[start:start + lengths[i - lo]], as_)
        raise StoreError(f"text {i} is in no shard of {self.path}; the manifest is corrupted.")

    def verify(self) -> None:
        """Check every shard's size and sha256 against the manifest; raise naming the first bad shard."""
        for rec in self.manifest["shards"]:
            f = self.path / rec["file"]
            if sha256_file(f) != rec["sha256"]:
                raise StoreError(f"shard {rec['file']} in {self.path} is corrupted (checksum mismatch); "
                                 "delete it and run the capture again with resume=True.")

    def to_frame(self):
        """One row per shard: file, first and last text, tokens per stack, bytes."""
        import pandas as pd

        return pd.DataFrame([{"file": r["file"], "first_text": r["texts"][0], "end_text": r["texts"][1],
                              **{f"tokens_{s}": sum(v) for s, v in r["lengths"].items()}, "bytes": r["bytes"]}
                             for r in self.manifest["shards"]])

    def __repr__(self) -> str:
        toks = ", ".join(f"{s}: {n} tokens" for s, n in self.manifest["n_tokens"].items())
        return (f"ActivationStore({str(self.path)!r}, {self.manifest['model']['name']!r}, {self.n_texts} texts, {toks}, "
                f"{len(self.sites)} sites, {len(self.manifest['shards'])} shards, {self.manifest['dtype']})")
