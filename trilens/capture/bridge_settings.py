"""Which of the bridge's hook points really fire, and the bridge settings some of them need.

TransformerLens lists every hook point its adapter declares, but some fire only after a bridge setting
(``hook_result`` after ``set_use_attn_result``, ``hook_q_input`` after ``set_use_split_qkv_input``, ...), which exists
only where the attention bridge has a fork point (decoder-only models), and some never fire on an architecture
(T5's ``hook_embed``), and a setting silences a few others (``attn.q.hook_in`` while ``use_split_qkv_input`` is on).
``firing_sites`` finds out at load with tiny forward passes; ``settings_for`` turns a setting
on for one run that needs it and restores it afterwards, also on error.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from ..devices import execution_device
from ..errors import SiteError


def gating_setting(bridge: Any, name: str) -> str | None:
    """The bridge setting that must be on for hook ``name`` to fire now (None: it fires as things are)."""
    point = bridge.hook_dict.get(name)
    reason = getattr(bridge, "_gated_hook_reason", None)
    return reason(getattr(point, "name", None) or name) if reason is not None else None


def _set(bridge: Any, setting: str, value: bool) -> None:
    getattr(bridge, f"set_{setting}")(value)


def _probe_batch(hf: Any, family: str) -> dict[str, torch.Tensor]:
    """Two tokens (and a two-token target for encoder-decoders) that are not padding."""
    config = hf.config
    vocab = config.vocab_size
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    device = execution_device(hf)
    ids = torch.tensor([[(pad + 1) % vocab, (pad + 2) % vocab]], device=device)
    kw = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if family == "encoder-decoder":
        start = getattr(config, "decoder_start_token_id", None)
        kw["decoder_input_ids"] = torch.tensor([[pad if start is None else start, (pad + 1) % vocab]], device=device)
    return kw


def _fired(bridge: Any, hf: Any, names: Iterable[str], batch: dict[str, torch.Tensor]) -> set[str]:
    fired: set[str] = set()

    def record(name: str):
        def hook(x: Any, hook: Any = None) -> None:
            fired.add(name)

        return hook

    attachable = [n for n in names if gating_setting(bridge, n) is None]
    with torch.no_grad(), bridge.hooks(fwd_hooks=[(n, record(n)) for n in attachable]):
        hf(**batch)
    return fired


@dataclass
class SiteProbe:
    """What the load-time probe found about the bridge's hook points."""

    names: list[str]  # the hook points that fire, in the bridge's order
    needs: dict[str, str]  # hook point -> the setting it needs to fire
    never: dict[str, str]  # listed hook point that never fires here -> why
    silenced: dict[str, set[str]]  # setting -> hook points that fire normally but not while it is on


def firing_sites(bridge: Any, hf: Any, family: str) -> SiteProbe:
    """Which hook points fire: one two-token forward pass, plus one per setting this bridge supports (each turned on
    alone, then off again)."""
    names = list(bridge.hook_dict)
    batch = _probe_batch(hf, family)
    fired = _fired(bridge, hf, names, batch)
    gated = {n: gating_setting(bridge, n) for n in names}
    needs: dict[str, str] = {}
    refused: dict[str, str] = {}
    silenced: dict[str, set[str]] = {}
    for setting in sorted({g for g in gated.values() if g is not None}):
        try:
            _set(bridge, setting, True)
        except (NotImplementedError, ValueError) as err:  # no fork point for it: its hooks never fire
            refused[setting] = str(err).split(". ")[0]
            continue
        try:
            now = _fired(bridge, hf, [n for n in names if gated[n] in (None, setting)], batch)
        finally:
            _set(bridge, setting, False)
        needs.update({n: setting for n in now if gated[n] == setting})
        silenced[setting] = fired - now
    keep = fired | set(needs)
    why = {n: (f"it needs TransformerLens's {gated[n]} setting, which this {type(hf).__name__} bridge does not support "
               f"({refused[gated[n]]})" if gated[n] in refused else
               f"TransformerLens lists it, but {type(hf).__name__} never calls it") for n in names if n not in keep}
    return SiteProbe([n for n in names if n in keep], needs, why, silenced)


@contextmanager
def settings_for(bridge: Any, names: Iterable[str], probe: SiteProbe) -> Iterator[None]:
    """Turn on, for the block, the settings the hook points ``names`` need; then put back what was there."""
    names = list(names)
    wanted = sorted({probe.needs[n] for n in names if n in probe.needs and gating_setting(bridge, n) is not None})
    if {"use_split_qkv_input", "use_attn_in"} <= set(wanted):
        raise SiteError("q/k/v_input and attn_in sites cannot fire in one run: TransformerLens's use_split_qkv_input "
                        "and use_attn_in settings exclude each other. Capture them in two runs.")
    for setting in wanted:
        quiet = [n for n in names if n in probe.silenced.get(setting, ())]
        if quiet:
            needer = next(n for n in names if probe.needs.get(n) == setting)
            raise SiteError(f"{quiet[0]} does not fire while TransformerLens's {setting} is on, which {needer} needs: "
                            "capture them in two runs.")
    previous = {s: bool(getattr(bridge.cfg, s, False)) for s in wanted}
    changed = []
    try:
        for setting in wanted:
            _set(bridge, setting, True)
            changed.append(setting)
        yield
    finally:
        for setting in reversed(changed):
            _set(bridge, setting, previous[setting])
