"""Corpus capture on Ray: the shards of ``capture_dataset`` written by a Ray Data actor pool, one model per worker.

The driver decides the store (``capture.json``, which shards are missing) exactly as a single process does; a Ray
Data pipeline over the missing shard numbers runs ``map_batches`` with an actor pool whose workers each load the
model once and write whole shards with ``capture_shard`` (atomically, so a shard is there or not); the driver
merges the manifest once at the end. A worker that dies has its shard retried by Ray on a restarted worker; a run
that stops leaves finished shards, and ``resume=True`` goes on from them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError, TrilensError
from ..source_stream import StreamedRows

if TYPE_CHECKING:
    from ..model import Model

RAY_INSTALL = "pip install 'trilens[ray]'"
FAIL_ONCE = "TRILENS_RAY_FAIL_ONCE"  # tests: "SHARD:MARKER" makes the worker writing SHARD die once


def check_ray(model: Model, num_workers: int, gpus_per_worker: float) -> None:
    """Refuse, before anything is written, what a Ray capture cannot do."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as err:
        raise TrilensError(f"engine='ray' needs Ray Data, which is not installed: {RAY_INSTALL}") from err
    if num_workers < 1 or gpus_per_worker < 0:
        raise InputError(f"num_workers must be at least 1 and gpus_per_worker at least 0 (not {num_workers}, "
                         f"{gpus_per_worker}).")
    if not (model.name.startswith("zoo:") or Path(model.name).expanduser().is_dir()):
        raise InputError(f"engine='ray' loads the model in every worker, from where it came: {model.name!r} is not a "
                         "model folder or 'zoo:NAME'. Save the model (save_pretrained) and load it from that folder.")


class ShardWriter:
    """A Ray Data actor: loads the model once, then writes every shard it is handed."""

    def __init__(self, source: str, dtype: str, texts: Sequence[Any], out: str, settings: dict[str, Any],
                 threads: int, device: str, placed: bool):
        import tempfile

        import trilens

        torch.set_num_threads(threads)
        if placed:  # as the driver's model was: split by accelerate over this worker's GPUs (and CPU, then disk)
            self.model = trilens.load(source, dtype=dtype, device_map="auto", offload_folder=tempfile.mkdtemp())
        else:
            self.model = trilens.load(source, dtype=dtype, device=device)
        self.texts, self.out, self.settings = texts, Path(out), settings

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from .shards import capture_shard, shard_block

        for k in (int(x) for x in batch["shard"]):
            _fail_once(k)
            block = shard_block(k, self.settings["texts_per_shard"], len(self.texts))
            capture_shard(self.model, self.texts, k, block, self.out, names=self.settings["names"],
                          batch_size=self.settings["batch_size"], dtype=getattr(torch, self.settings["dtype"]),
                          truncate=self.settings["truncate"])
        return {"shard": batch["shard"]}


def _fail_once(k: int) -> None:
    """The test hook: die (as a killed worker does, without cleaning up) the first time shard ``k`` comes."""
    spec = os.environ.get(FAIL_ONCE, "")
    if spec.partition(":")[0] == str(k):
        marker = Path(spec.partition(":")[2])
        if not marker.exists():
            marker.touch()
            os._exit(1)


def capture_on_ray(model: Model, texts: Sequence[Any], todo: list[int], out: Path, *, names: list[str],
                   batch_size: int, texts_per_shard: int, dtype: torch.dtype, truncate: bool, address: str | None,
                   num_workers: int, gpus_per_worker: float, progress: bool) -> None:
    """Write shards ``todo`` of the store at ``out`` on a Ray cluster (started locally when none is running)."""
    import ray
    import ray.data

    if not todo:
        return
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    cpus = max(1.0, ray.available_resources().get("CPU", 1.0) // num_workers) if not gpus_per_worker else 1.0
    settings = {"names": names, "batch_size": batch_size, "texts_per_shard": texts_per_shard,
                "dtype": str(dtype).removeprefix("torch."), "truncate": truncate}
    shards = ray.data.from_items([{"shard": k} for k in todo], override_num_blocks=len(todo))
    # Ray Data restarts a dead actor and retries the shard it held (its defaults: max_restarts and max_task_retries
    # -1); an exception in the shard's own code is not retried, and ends the run with its message
    written = shards.map_batches(
        ShardWriter, batch_size=1, compute=ray.data.ActorPoolStrategy(size=min(num_workers, len(todo))),
        num_cpus=cpus, num_gpus=gpus_per_worker,
        fn_constructor_kwargs={"source": model.name, "dtype": str(model.dtype).removeprefix("torch."),
                               "texts": texts if isinstance(texts, StreamedRows) else list(texts), "out": str(out), "settings": settings, "threads": int(cpus),
                               "device": "cuda" if gpus_per_worker else "cpu",
                               "placed": model.placement() is not None})
    done = sorted(int(row["shard"]) for row in written.take_all())
    if done != sorted(todo):
        raise TrilensError(f"the Ray capture wrote shards {done}, not {sorted(todo)}; run again with resume=True.")
