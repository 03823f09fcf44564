"""``ActivationCache``: captured activations with stack-aware access, masks and token strings."""

from __future__ import annotations

import html
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..atomic import atomic_dir, read_saved
from ..errors import SiteError, closest
from ..sites import PATTERN_KINDS, Site


class ActivationCache(Mapping):
    """Activations from one run, keyed by TransformerLens hook name.

    ``cache["blocks.3.hook_resid_post"]``, ``cache["resid_post", 3]`` or (encoder-decoder)
    ``cache["resid_post", 3, "encoder"]`` give ``[batch, pos, ...]``; ``cache.stack("resid_post")``
    gives all layers as one ``[layer, batch, pos, ...]`` tensor. Attention patterns are
    ``[batch, head, query, key]``. ``positions`` (when the trace selected some) says which
    positions of each sequence were kept.
    """

    def __init__(
        self,
        activations: dict[str, torch.Tensor],
        sites: dict[str, Site],
        *,
        stacks: tuple[str, ...],
        masks: dict[str, torch.Tensor],
        tokens: dict[str, list[list[str]]] | None = None,
        ids: dict[str, torch.Tensor] | None = None,
        positions: dict[str, torch.Tensor] | None = None,
        logits: torch.Tensor | None = None,
        info: dict[str, Any] | None = None,
    ):
        self._acts = activations
        self._sites = sites
        self.stacks = stacks
        self.masks = masks
        self._tokens = tokens or {}
        self.ids = ids or {}
        self.positions = positions or {}
        self.logits = logits
        self.info = info or {}

    # -- mapping ----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[str]:
        return iter(self._acts)

    def __len__(self) -> int:
        return len(self._acts)

    def _default_stack(self, stack: str | None, kind: str | None = None) -> str:
        if stack is not None:
            if stack not in self.stacks:
                raise SiteError(f"no stack {stack!r}; this cache's stacks are {list(self.stacks)}.")
            return stack
        present = {s.stack for n, s in self._sites.items() if n in self._acts and s.stack and kind in (None, s.kind)}
        if len(present) == 1:
            return present.pop()
        if len(self.stacks) == 1:
            return self.stacks[0]
        raise SiteError(f"this cache holds several stacks {sorted(present)}: pass the stack, e.g. cache[kind, layer, 'encoder'].")

    def _lookup(self, kind: str, layer: int, stack: str | None) -> str:
        stack = self._default_stack(stack, kind)
        layers = [s.layer for s in self._sites.values() if s.stack == stack and s.layer is not None]
        n = max(layers, default=-1) + 1
        layer = layer % n if layer < 0 and n else layer
        for name, s in self._sites.items():
            if s.kind == kind and s.layer == layer and s.stack == stack and name in self._acts:
                return name
        raise SiteError(f"{kind!r} at layer {layer} of the {stack} stack was not captured; captured: {list(self._acts)[:8]}...")

    def __getitem__(self, key: str | tuple) -> torch.Tensor:
        if isinstance(key, tuple):
            return self._acts[self._lookup(key[0], key[1], key[2] if len(key) > 2 else None)]
        if key in self._acts:
            return self._acts[key]
        hint = closest(key, list(self._acts))
        raise SiteError(f"{key!r} was not captured." + (f" Did you mean: {', '.join(hint)}?" if hint else "")
                        + " Pass it in sites= when tracing.")

    def site(self, name: str) -> Site:
        return self._sites[name]

    # -- stack-aware views ----------------------------------------------------------------------
    def names(self, kind: str, stack: str | None = None) -> list[str]:
        """Captured hook names of one kind in one stack, ordered by layer."""
        stack = self._default_stack(stack, kind)
        found = [(s.layer, n) for n, s in self._sites.items() if n in self._acts and s.kind == kind and s.stack == stack]
        if not found:
            raise SiteError(f"no {kind!r} sites of the {stack} stack were captured.")
        return [n for _, n in sorted(found)]

    def layers(self, kind: str, stack: str | None = None) -> list[int]:
        return [self._sites[n].layer for n in self.names(kind, stack)]

    def stack(self, kind: str, stack: str | None = None) -> torch.Tensor:
        """All captured layers of ``kind`` as one ``[layer, batch, pos, ...]`` tensor."""
        return torch.stack([self._acts[n] for n in self.names(kind, stack)])

    def accumulated_resid(self, stack: str | None = None) -> torch.Tensor:
        """The residual stream after the embeddings and after every block: ``[n_layers + 1, batch, pos, d]``.

        Needs ``resid_pre`` of layer 0 and ``resid_post`` of every layer (trace with
        ``sites=["resid_pre", "resid_post"]`` or ``sites="resid"``).
        """
        stack = self._default_stack(stack)
        first = self._lookup("resid_pre", 0, stack)
        return torch.cat([self._acts[first][None], self.stack("resid_post", stack)])

    def mask(self, stack: str | None = None) -> torch.Tensor:
        """``[batch, pos]`` bool: True at real tokens (after position selection, if any)."""
        stack = self._default_stack(stack)
        return self.masks[stack]

    def tokens(self, stack: str | None = None) -> list[list[str]]:
        """Token strings per sequence at the kept positions (padding included; see ``mask``)."""
        return self._tokens.get(self._default_stack(stack), [])

    # -- results protocol -----------------------------------------------------------------------
    def to_frame(self):
        """One row per captured site: name, stack, layer, kind, shape, dtype, mean L2 norm."""
        import pandas as pd

        rows = []
        for name, t in self._acts.items():
            s = self._sites[name]
            vec = t.float()
            norm = vec.flatten(start_dim=3).norm(dim=-1) if s.kind in PATTERN_KINDS else vec.norm(dim=-1)
            rows.append({"site": name, "stack": s.stack, "layer": s.layer, "kind": s.kind,
                         "shape": tuple(t.shape), "dtype": str(t.dtype).removeprefix("torch."),
                         "mean_norm": float(norm.mean())})
        return pd.DataFrame(rows)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path/activations.safetensors`` and ``path/cache.json`` (atomically, via a temp dir)."""
        path = Path(path)
        tensors = {f"act/{n}": t.contiguous() for n, t in self._acts.items()}
        tensors.update({f"mask/{s}": m.to(torch.uint8).contiguous() for s, m in self.masks.items()})
        tensors.update({f"ids/{s}": t.contiguous() for s, t in self.ids.items()})
        tensors.update({f"positions/{s}": t.contiguous() for s, t in self.positions.items()})
        if self.logits is not None:
            tensors["logits"] = self.logits.contiguous()
        meta = {"format": "trilens.ActivationCache/1", "stacks": list(self.stacks), "info": self.info,
                "tokens": self._tokens, "sites": {n: asdict(self._sites[n]) for n in self._acts}}
        with atomic_dir(path) as tmp:
            save_file(tensors, tmp / "activations.safetensors")
            (tmp / "cache.json").write_text(json.dumps(meta, indent=1))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ActivationCache:
        """Read a cache written by ``save``."""
        meta, tensors = read_saved(path, "cache.json", "activations.safetensors", "ActivationCache")
        group = lambda p: {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}  # noqa: E731
        return cls(
            group("act/"), {n: Site(**s) for n, s in meta["sites"].items()}, stacks=tuple(meta["stacks"]),
            masks={k: v.bool() for k, v in group("mask/").items()}, tokens=meta["tokens"], ids=group("ids/"),
            positions=group("positions/"), logits=tensors.get("logits"), info=meta["info"],
        )

    def __repr__(self) -> str:
        shapes = ", ".join(f"{n}: {tuple(t.shape)}" for n, t in list(self._acts.items())[:4])
        more = f", ... ({len(self._acts)} sites)" if len(self._acts) > 4 else ""
        return f"ActivationCache({shapes}{more})"

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(n)}</td><td>{tuple(t.shape)}</td><td>{str(t.dtype).removeprefix('torch.')}</td></tr>"
            for n, t in self._acts.items()
        )
        return f"<table><tr><th>site</th><th>shape</th><th>dtype</th></tr>{rows}</table>"
