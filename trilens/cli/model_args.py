"""The model argument every subcommand shares, with where and how to load it: ``--device``, ``--model-dtype`` and
accelerate's placement (``--device-map``, ``--max-memory``, ``--offload-folder``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import InputError


def add_model(p: argparse.ArgumentParser, **kwargs: Any) -> None:
    """The positional ``model`` (``kwargs`` go to it) and the loading options."""
    p.add_argument("model", **{"help": "a model directory, hub id or zoo:NAME", **kwargs})
    g = p.add_argument_group("loading the model")
    g.add_argument("--device", default=None, help="where to load it whole: cpu, cuda, cuda:1, mps")
    g.add_argument("--model-dtype", default=None, help="the weights' dtype: float32, bfloat16, float16")
    g.add_argument("--device-map", default=None, help="accelerate's placement across devices: auto, balanced, "
                   "sequential, a JSON object of module -> device ('{\"model.layers.0\": 0, \"lm_head\": \"cpu\"}') "
                   "or a .json file holding one")
    g.add_argument("--max-memory", default=None, help="with --device-map: memory per device, e.g. 0=20GiB,cpu=60GiB")
    g.add_argument("--offload-folder", type=Path, default=None, help="with --device-map: where layers that fit no "
                   "device go (disk offload)")


def device_map(text: str | None) -> Any:
    """``--device-map``: a strategy name, a JSON object, or the path of a JSON file holding one."""
    if text is None or not text.strip().startswith("{") and not text.endswith(".json"):
        return text
    raw = Path(text).read_text() if text.endswith(".json") and Path(text).exists() else text
    try:
        table = json.loads(raw)
    except ValueError as err:
        raise InputError(f"--device-map {text!r} is not a JSON object of module -> device ({err}).") from err
    if not isinstance(table, dict):
        raise InputError(f"--device-map {text!r} must be a JSON object of module -> device.")
    return table


def max_memory(text: str | None) -> dict[Any, str] | None:
    """``--max-memory 0=20GiB,cpu=60GiB`` -> ``{0: "20GiB", "cpu": "60GiB"}``."""
    if text is None:
        return None
    out: dict[Any, str] = {}
    for item in text.split(","):
        device, sep, amount = item.partition("=")
        if not sep or not device.strip() or not amount.strip():
            raise InputError(f"--max-memory {text!r}: each item is DEVICE=AMOUNT, e.g. 0=20GiB,cpu=60GiB.")
        device = device.strip()
        out[int(device) if device.isdigit() else device] = amount.strip()
    return out


def load_model(args: argparse.Namespace, source: Any = None) -> Any:
    """``trilens.load`` with the loading options of ``args`` (``source`` instead of ``args.model`` if given)."""
    import trilens

    placement = {"device_map": device_map(args.device_map), "max_memory": max_memory(args.max_memory),
                 "offload_folder": str(args.offload_folder) if args.offload_folder else None}
    if placement["device_map"] is None and (placement["max_memory"] or placement["offload_folder"]):
        raise InputError("--max-memory and --offload-folder place a model with --device-map; add --device-map auto.")
    kwargs = {k: v for k, v in placement.items() if v is not None}
    return trilens.load(args.model if source is None else source, device=args.device, dtype=args.model_dtype, **kwargs)
