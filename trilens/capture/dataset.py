"""``capture_dataset``: stream a corpus's activations to an ``ActivationStore`` with bounded memory.

Texts are cut into fixed blocks of ``texts_per_shard``; block k becomes ``shard-k`` (written to a
temporary file, then renamed). A run that stops part-way resumes at the first missing shard;
``shard=(i, n)`` makes a process do blocks k with k % n == i, so n processes or machines can share
a corpus and the store merges their shards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from ..devices import as_dtype, dtype_name
from ..errors import InputError, StoreError
from ..provenance import model_fingerprint
from ..sites import PATTERN_KINDS
from ..source_stream import StreamedRows
from ..sources import is_source
from .shards import capture_shard, shard_block, store_stacks
from .store import (
    FORMAT,
    ActivationStore,
    merge,
    sha256_file,
    shard_name,
    write_json_atomic,
)

if TYPE_CHECKING:
    from ..model import Model

log = logging.getLogger(__name__)


def texts_hash(texts: Sequence[Any]) -> str:
    """The fingerprint of a list of inputs that a store records (same texts, same order, same hash)."""
    h = hashlib.sha256()
    for t in texts:
        h.update(json.dumps(t).encode())
        h.update(b"\n")
    return h.hexdigest()


def parse_shard(shard: Any) -> tuple[int, int]:
    """``(i, n)`` from ``(i, n)`` or ``"i/n"``."""
    if shard is None:
        return 0, 1
    try:
        i, n = (int(x) for x in (shard.split("/") if isinstance(shard, str) else shard))
    except (TypeError, ValueError) as err:
        raise InputError(f"shard must be 'i/n' or (i, n) with 0 <= i < n, not {shard!r}.") from err
    if not 0 <= i < n:
        raise InputError(f"shard {i}/{n} does not exist: i must be between 0 and {n - 1}.")
    return i, n


def _prepare_dir(out: Path, spec: dict[str, Any], *, resume: bool, overwrite: bool, sharded: bool) -> None:
    """Refuse an out_dir that holds something else; clear it on overwrite; write capture.json."""
    spec_file = out / "capture.json"
    if out.exists() and any(out.iterdir()):
        existing = json.loads(spec_file.read_text()) if spec_file.exists() else None
        if overwrite:
            shutil.rmtree(out)
        elif existing is None:
            raise StoreError(f"{out} is not empty and holds no trilens capture; choose an empty folder or pass overwrite=True.")
        elif existing != spec:
            diff = [k for k in spec if existing.get(k) != spec[k]]
            raise StoreError(f"{out} holds a different capture (differs in {', '.join(diff)}); "
                             "choose another folder or pass overwrite=True to replace it.")
        elif not (resume or sharded):
            state = "complete" if (out / "manifest.json").exists() else "incomplete"
            raise StoreError(f"{out} already holds this capture ({state}); pass resume=True to continue or "
                             "reuse it, or overwrite=True to start again.")
    out.mkdir(parents=True, exist_ok=True)
    if not spec_file.exists():
        write_json_atomic(spec_file, spec)


def _finished(out: Path, k: int) -> bool:
    rec_file = out / f"{shard_name(k)}.json"
    if not rec_file.exists():
        return False
    rec = json.loads(rec_file.read_text())
    f = out / rec["file"]
    return f.exists() and f.stat().st_size == rec["bytes"] and sha256_file(f) == rec["sha256"]


def capture_dataset(
    model: Model,
    texts: Sequence[Any],
    sites: str | Sequence[str],
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 8,
    texts_per_shard: int = 256,
    dtype: Any = None,
    resume: bool = False,
    overwrite: bool = False,
    shard: Any = None,
    truncate: bool = False,
    progress: bool = True,
    split: str | None = None,
    text_column: str = "text",
    target_column: str | None = None,
    engine: str = "local",
    address: str | None = None,
    num_workers: int = 2,
    gpus_per_worker: float = 0,
) -> ActivationStore | None:
    """Capture per-token ``sites`` for every text into ``out_dir``; returns the store once it is complete.

    Args:
        texts: strings, or (source, target) pairs for encoder-decoder models; or a data source (a ``datasets.Dataset``
            or ``DatasetDict``, a ``save_to_disk`` folder, a Parquet, JSON-lines or CSV file as a ``Path``), whose
            ``text_column`` (and ``target_column``) are read, from ``split``, a shard at a time as the capture goes
            (``trilens.source_stream.StreamedRows``: memory holds one shard's rows, not the corpus).
        sites: hook names or kinds of per-token activations (attention patterns are refused).
        texts_per_shard: texts per shard file; memory holds one shard's activations at a time.
        dtype: the dtype stored on disk (default: the model's).
        resume: continue a matching capture already in ``out_dir``, skipping verified shards.
        overwrite: replace whatever ``out_dir`` holds.
        shard: ``(i, n)`` or ``"i/n"``: do only this process's share; returns None until all parts exist.
        engine: ``"local"`` (this process) or ``"ray"``: the shards are written by a Ray Data actor pool of
            ``num_workers`` workers (each loads the model once, with ``gpus_per_worker`` GPUs; a model that
            ``device_map`` placed is placed again in each worker, by ``"auto"`` over its own GPUs), on the cluster at
            ``address`` (``"auto"``: the one ``ray start`` began; None: a local one unless Ray is already running).
            Same store, same bytes; failed workers' shards are retried by Ray, and a re-run with ``resume`` goes on.
    """
    if is_source(texts):  # read on demand, a shard at a time: the corpus need not fit in memory
        texts = StreamedRows(texts, split=split, text_column=text_column, target_column=target_column)
    if isinstance(texts, (str, bytes)) or len(texts) == 0:
        raise InputError("capture_dataset needs a non-empty sequence of texts.")
    if batch_size < 1 or texts_per_shard < 1:
        raise InputError("batch_size and texts_per_shard must be at least 1.")
    if engine not in ("local", "ray"):
        raise InputError(f"engine must be 'local' or 'ray', not {engine!r}.")
    if engine == "ray":
        from .ray_engine import check_ray

        check_ray(model, num_workers, gpus_per_worker)
    names = model.site_index.resolve(sites)
    ragged = [n for n in names if model.site_index.site(n).kind in PATTERN_KINDS]
    if ragged:
        raise InputError(f"{ragged[0]} is an attention pattern/score site: its size grows with the square of the "
                         "length, so it is not stored per token. Capture it with model.trace instead.")
    part, n_parts = parse_shard(shard)
    store_dtype = as_dtype(dtype) or model.dtype
    site_info = {n: {"stack": s.stack, "layer": s.layer, "kind": s.kind}
                 for n, s in ((n, model.site_index.site(n)) for n in names)}
    stacks = store_stacks(model, names, texts)
    n_shards = (len(texts) + texts_per_shard - 1) // texts_per_shard
    spec = {"format": FORMAT, "model": {"name": model.name, "architecture": model.architecture, "family": model.family,
                                        "fingerprint": model_fingerprint(model)},
            "sites": site_info, "stacks": stacks, "dtype": dtype_name(store_dtype), "n_texts": len(texts),
            "texts_sha256": texts_hash(texts), "texts_per_shard": texts_per_shard, "n_shards": n_shards,
            "truncate": truncate}
    out = Path(out_dir)
    _prepare_dir(out, spec, resume=resume, overwrite=overwrite, sharded=shard is not None)

    mine = [k for k in range(n_shards) if k % n_parts == part]
    blocks = {k: shard_block(k, texts_per_shard, len(texts)) for k in mine}
    if engine == "ray":
        from .ray_engine import capture_on_ray

        todo = [k for k in mine if not _finished(out, k)]
        capture_on_ray(model, texts, todo, out, names=names, batch_size=batch_size, texts_per_shard=texts_per_shard,
                       dtype=store_dtype, truncate=truncate, address=address, num_workers=num_workers,
                       gpus_per_worker=gpus_per_worker, progress=progress)
        return ActivationStore(out) if merge(out) is not None else None
    bar = tqdm(total=sum(len(b) for b in blocks.values()), unit="row", unit_scale=True,
               desc=f"capture {part}/{n_parts}" if n_parts > 1 else "capture", disable=not progress)
    try:
        for k, block in blocks.items():
            if _finished(out, k):
                log.info("shard %d already written; skipping", k)
                bar.update(len(block))
                continue
            capture_shard(model, texts, k, block, out, names=names, batch_size=batch_size, dtype=store_dtype,
                          truncate=truncate, bar=bar)
    finally:
        bar.close()
    return ActivationStore(out) if merge(out) is not None else None
