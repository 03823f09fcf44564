"""Placing a model across devices with accelerate: the parts a ``device_map`` can name, and what to do when a
placement cannot be made.

A ``device_map`` dict maps module names to a device (a GPU index, ``"cpu"`` or ``"disk"``) and must cover every
weight once, never cutting through a module its class lists in ``_no_split_modules`` (a transformer block). The parts
``placeable_parts`` lists are exactly such a cover: each no-split block, plus the largest modules that hold no block.
"""

from __future__ import annotations

from typing import Any

import torch


def placeable_parts(model: torch.nn.Module) -> list[str]:
    """Module names that a ``device_map`` dict for ``model`` can use, covering every weight once."""
    blocks = set(getattr(model, "_no_split_modules", None) or ())
    holds_block = {name for name, m in model.named_modules() if type(m).__name__ in blocks}
    holds_block |= {name.rsplit(".", i)[0] for name in list(holds_block) for i in range(1, name.count(".") + 1)}
    parts: list[str] = []

    def walk(prefix: str, module: torch.nn.Module) -> None:
        for child_name, child in module.named_children():
            name = f"{prefix}{child_name}"
            if type(child).__name__ in blocks or name not in holds_block:
                if any(True for _ in child.parameters()) or any(True for _ in child.buffers()):
                    parts.append(name)
            else:
                walk(f"{name}.", child)

    walk("", model)
    own = [n for n, _ in model.named_parameters(recurse=False)]
    return own + parts


def example_device_map(parts: list[str]) -> dict[str, str]:
    """A dict over ``parts`` that keeps the first half of the blocks and the rest on CPU and sends the later blocks to
    disk: the shape of a ``device_map`` a user can edit."""
    numbered = [p for p in parts if p.rsplit(".", 1)[-1].isdigit()]
    later = set(numbered[len(numbered) // 2:])
    return {p: "disk" if p in later else "cpu" for p in parts}


def check_device_map(device_map: Any, device: Any = None) -> None:
    """Refuse, before anything loads, a ``device_map`` beside a ``device``, or one that names a device this machine
    does not have."""
    from .devices import as_device
    from .errors import ModelLoadError, TrilensError

    if device_map is None:
        return
    if device is not None:
        raise ModelLoadError("pass either device= or device_map=: a model placed by a device_map stays where "
                             "accelerate put it.")
    if isinstance(device_map, str):
        return
    if not isinstance(device_map, dict):
        raise ModelLoadError(f"device_map must be 'auto' (or another accelerate strategy) or a dict of module name -> "
                             f"device, not a {type(device_map).__name__}.")
    for part, device in device_map.items():
        if device in ("disk", "cpu"):
            continue
        try:
            as_device(f"cuda:{device}" if isinstance(device, int) else device)
        except TrilensError as err:
            raise ModelLoadError(f"device_map puts {part!r} on {device!r}: {err}") from err


def placement_refused(cls: type, config: Any, err: Exception) -> str:
    """Why accelerate could not place a model of ``cls`` with the ``device_map`` asked for, and a dict to pass instead."""
    try:
        from accelerate import init_empty_weights

        with init_empty_weights():
            empty = cls(config)
        example = example_device_map(placeable_parts(empty))
        shown = ", ".join(f"{k!r}: {v!r}" for k, v in list(example.items())[:12]) + (", ..." if len(example) > 12 else "")
        suggestion = (f" Pass device_map as a dict over these parts of {cls.__name__} (each no-split block "
                      f"{sorted(getattr(empty, '_no_split_modules', None) or ())} whole), for example {{{shown}}}.")
    except Exception:  # the suggestion is a courtesy: a model that cannot even be built empty gets the bare reason
        suggestion = " Pass device_map as a dict of module name -> device that covers every weight once."
    reason = str(err) if len(str(err)) < 400 else f"{str(err)[:400]}..."
    return f"accelerate could not place {cls.__name__} with this device_map ({type(err).__name__}: {reason}).{suggestion}"
