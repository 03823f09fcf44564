"""``ActivationCache``: captured activations with stack-aware access, masks and token strings."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..atomic import read_saved
from ..errors import InputError, SiteError, closest
from ..results import Result, group, register_result
from ..sites import PATTERN_KINDS, Site


@register_result
class ActivationCache(Result, Mapping):
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

    def site_name(self, kind: str, layer: int, stack: str | None = None) -> str:
        """The captured hook name of ``kind`` at ``layer`` (negative counts from the end) of ``stack``."""
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
            return self._acts[self.site_name(key[0], key[1], key[2] if len(key) > 2 else None)]
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
        first = self.site_name("resid_pre", 0, stack)
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

    def figure(self, site: str | None = None, *, head: int | None = None, sequence: int = 0, stack: str | None = None):
        """A figure of what was captured, for one sequence.

        An attention pattern site (hook name) gives that pattern with token labels (one ``head``, or the mean
        over heads); any other hook name or kind (``"resid_post"``, of ``stack`` where several have it) gives a
        layers x positions heatmap of the activation's L2 norm. Without ``site``: the last captured pattern if any,
        else the first kind captured.
        """
        from ..viz.attention import pattern_figure

        if not self._acts:
            raise InputError("this cache is empty: nothing to draw.")
        if site is None:
            patterns = [n for n in self._acts if self._sites[n].kind in PATTERN_KINDS]
            first = self._sites[next(iter(self._acts))]
            site, stack = (patterns[-1], stack) if patterns else (first.kind, stack or first.stack)
        if site in self._acts and self._sites[site].kind in PATTERN_KINDS:
            return pattern_figure(self, site, head, sequence)
        names = [site] if site in self._acts else self.names(site, stack)
        return self._norm_figure(names, sequence)

    def _norm_figure(self, names: list[str], sequence: int):
        from ..viz import layer_heatmap

        kinds = {self._sites[n].kind for n in names}
        if kinds & PATTERN_KINDS:
            raise InputError("draw attention patterns one layer at a time: pass the hook name, e.g. cache.figure(name, head=0).")
        stack = self._sites[names[0]].stack
        first = self._acts[names[0]]
        if not 0 <= sequence < first.shape[0]:
            raise InputError(f"sequence {sequence} does not exist; this cache holds {first.shape[0]}.")
        keep = self.masks[stack][sequence].nonzero().flatten().tolist() if stack in self.masks else list(range(first.shape[1]))
        norms = torch.stack([self._acts[n][sequence].float().flatten(1).norm(dim=-1)[keep] for n in names])
        tokens = self.tokens(stack)
        labels = [tokens[sequence][i] for i in keep] if tokens else [str(i) for i in keep]
        rows = [self._sites[n].layer if self._sites[n].layer is not None else n for n in names]
        return layer_heatmap(norms, labels, layers=rows, colorbar="L2 norm", y_title="layer",
                             title=f"{', '.join(sorted(kinds))} norm per position" + (f" — {self.info['model']}" if self.info.get("model") else ""))

    def _state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        tensors = {f"act/{n}": t for n, t in self._acts.items()}
        tensors.update({f"mask/{s}": m.to(torch.uint8) for s, m in self.masks.items()})
        tensors.update({f"ids/{s}": t for s, t in self.ids.items()})
        tensors.update({f"positions/{s}": t for s, t in self.positions.items()})
        if self.logits is not None:
            tensors["logits"] = self.logits
        data = {"stacks": list(self.stacks), "tokens": self._tokens, "sites": {n: asdict(self._sites[n]) for n in self._acts}}
        return data, tensors

    @classmethod
    def _from_state(cls, data: dict[str, Any], tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> ActivationCache:
        acts = group(tensors, "act/")
        return cls(
            {n: acts[n] for n in data["sites"]}, {n: Site(**s) for n, s in data["sites"].items()}, stacks=tuple(data["stacks"]),
            masks={k: v.bool() for k, v in group(tensors, "mask/").items()}, tokens=data["tokens"], ids=group(tensors, "ids/"),
            positions=group(tensors, "positions/"), logits=tensors.get("logits"), info=info,
        )

    @classmethod
    def _from_legacy(cls, path: Path) -> ActivationCache:
        meta, tensors = read_saved(path, "cache.json", "activations.safetensors", "ActivationCache")
        return cls._from_state(meta, tensors, meta["info"])

    def __repr__(self) -> str:
        shapes = ", ".join(f"{n}: {tuple(t.shape)}" for n, t in list(self._acts.items())[:4])
        more = f", ... ({len(self._acts)} sites)" if len(self._acts) > 4 else ""
        return f"ActivationCache({shapes}{more})"

    def _table_html(self) -> str:
        return self.to_frame().to_html(index=False, float_format=lambda v: f"{v:.3f}")
