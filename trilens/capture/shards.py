"""One shard of an activation store: the texts of a block traced in batches and written atomically, the same bytes
whichever process or worker writes it (``capture_dataset`` locally, or its Ray engine)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file

from ..atomic import atomic_file
from .store import sha256_file, shard_name, write_json_atomic
from .trace import trace

if TYPE_CHECKING:
    from ..model import Model


def shard_block(k: int, texts_per_shard: int, n_texts: int) -> range:
    """The indices of the texts that shard ``k`` holds."""
    return range(k * texts_per_shard, min(n_texts, (k + 1) * texts_per_shard))


def store_stacks(model: Model, names: list[str], texts: Sequence[Any]) -> list[str]:
    """The stacks a store records token ids for: the sites' stacks, and both for (source, target) pairs."""
    pairs = model.family == "encoder-decoder" and isinstance(texts[0], tuple)  # as in inputs.encode
    found = {model.site_index.site(n).stack for n in names} | ({"encoder", "decoder"} if pairs else set())
    return sorted(found or {model.stacks[0]}, key=model.stacks.index)


def capture_shard(model: Model, texts: Sequence[Any], k: int, block: range, out: Path, *, names: list[str],
                  batch_size: int, dtype: torch.dtype, truncate: bool, bar: Any = None) -> None:
    """Trace the texts of ``block`` in batches and write them as shard ``k`` (atomically): the same bytes whichever
    process or worker writes it."""
    site_stacks = {n: model.site_index.site(n).stack for n in names}
    stacks = store_stacks(model, names, texts)
    rows: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    ids: dict[str, list[torch.Tensor]] = {s: [] for s in stacks}
    lengths: dict[str, list[int]] = {s: [] for s in stacks}
    tokens = 0
    for start in range(block.start, block.stop, batch_size):
        chunk = list(texts[start:min(block.stop, start + batch_size)])
        cache = trace(model, chunk, names, dtype=dtype, device="cpu", truncate=truncate, logits=False, tokens=False)
        for s in stacks:
            mask = cache.masks[s]
            ids[s].append(cache.ids[s][mask].to(torch.int32))
            lengths[s].extend(mask.sum(1).tolist())
        for n in names:
            rows[n].append(cache[n][cache.masks[site_stacks[n]]])
        tokens += int(cache.masks[stacks[0]].sum())
        if bar is not None:
            bar.update(len(chunk))
            bar.set_postfix(tokens=tokens, refresh=False)
    tensors = {f"act/{n}": torch.cat(v).contiguous() for n, v in rows.items()}
    tensors.update({f"ids/{s}": torch.cat(v).contiguous() for s, v in ids.items()})
    _write_shard(out, k, block, tensors, lengths)


def _write_shard(out: Path, k: int, texts: range, tensors: dict[str, torch.Tensor], lengths: dict[str, list[int]]) -> None:
    name = shard_name(k)
    f = out / f"{name}.safetensors"
    with atomic_file(f) as tmp:
        save_file(tensors, tmp)
    write_json_atomic(out / f"{name}.json", {"file": f.name, "texts": [texts.start, texts.stop], "lengths": lengths,
                                             "bytes": f.stat().st_size, "sha256": sha256_file(f)})
