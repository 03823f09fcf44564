"""``PatchingResult``: the metric of every patched cell (exact, or estimated by attribution patching), raw and
normalised, with the tokens of each position (the clean run's)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError
from ..inputs import token_names
from ..results import Result, group, register_result
from .cells import Panel

if TYPE_CHECKING:
    from ..inputs import Batch
    from ..model import Model

METHOD_TITLES = {"exact": "activation patching", "atp": "attribution patching (AtP)", "atp*": "AtP* (QK fix + GradDrop)"}


def stack_tokens(model: Model, batch: Batch) -> dict[str, list[list[str]]]:
    """Per stack, each pair's real tokens."""
    out = {}
    for stack, ids in batch.ids.items():
        mask = batch.masks[stack].cpu()
        rows = [ids[r].cpu()[mask[r]].tolist() for r in range(ids.shape[0])]
        out[stack] = [token_names(model.tokenizer, r) for r in rows]
    return out


@register_result
class PatchingResult(Result):
    """Per panel (``"decoder.resid_pre"``, ``"encoder.z"``, ...), ``values[key] [pair, layer, position(, head)]``: the
    metric of the patched run with that one cell patched (``positions="all"``: ``[pair, layer(, head)]``); NaN where a
    cell does not exist (past a pair's length). ``m_clean``, ``m_corrupted [pair]``: the metric of the unpatched runs.
    ``normalised(key)`` = (m_patched − m_corrupted) / (m_clean − m_corrupted), as TransformerLens's ``patching``: 1 means
    the cell restores the clean behaviour (denoising), 0 that it changes nothing. Attribution patching stores its
    first-order estimate of the patched metric in the same place.
    """

    def __init__(self, *, values: dict[str, torch.Tensor], panels: list[Panel], m_clean: torch.Tensor,
                 m_corrupted: torch.Tensor, tokens: dict[str, list[list[str]]], direction: str, method: str, family: str,
                 info: dict[str, Any], magnitudes: dict[str, torch.Tensor] | None = None):
        self.values, self.panels = {k: v.double() for k, v in values.items()}, list(panels)
        self.m_clean, self.m_corrupted = m_clean.double(), m_corrupted.double()
        self.tokens, self.direction, self.method, self.family, self.info = tokens, direction, method, family, info
        # AtP*'s GradDrop |effect| per cell, where it ran
        self.magnitudes = None if magnitudes is None else {k: v.double() for k, v in magnitudes.items()}

    # -- access ------------------------------------------------------------------------------
    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.panels]

    @property
    def n_pairs(self) -> int:
        return int(self.m_clean.shape[0])

    @property
    def m_base(self) -> torch.Tensor:
        """The metric of the run that was patched (corrupted when denoising, clean when noising)."""
        return self.m_corrupted if self.direction == "denoise" else self.m_clean

    def panel(self, key: str | None = None) -> Panel:
        """The panel ``key`` (a ``"stack.kind"`` key, or a kind where one stack has it; default: the first)."""
        if key is None:
            return self.panels[0]
        found = [p for p in self.panels if key in (p.key, p.kind)]
        if len(found) != 1:
            raise InputError(f"no panel {key!r} in this result" if not found else f"{key!r} is in several stacks: pass "
                             f"one of {', '.join(p.key for p in found)}" + f"; it holds {', '.join(self.keys)}.")
        return found[0]

    def raw(self, key: str | None = None) -> torch.Tensor:
        """The patched metric per cell, ``[pair, layer, ...]``."""
        return self.values[self.panel(key).key]

    def _per_pair(self, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return v.view(-1, *[1] * (t.dim() - 1))

    def normalised(self, key: str | None = None) -> torch.Tensor:
        """(m_patched − m_corrupted) / (m_clean − m_corrupted) per cell and pair (NaN where the two runs agree)."""
        t = self.raw(key)
        gap = self.m_clean - self.m_corrupted
        gap = torch.where(gap.abs() > 1e-12, gap, torch.full_like(gap, float("nan")))
        return (t - self._per_pair(t, self.m_corrupted)) / self._per_pair(t, gap)

    def effect(self, key: str | None = None) -> torch.Tensor:
        """m_patched − m of the patched run, per cell and pair (the change one cell makes)."""
        t = self.raw(key)
        return t - self._per_pair(t, self.m_base)

    def mean(self, key: str | None = None, *, normalised: bool = True) -> torch.Tensor:
        """Over pairs: the mean patched metric, normalised by the mean clean and corrupted metrics (cells a pair lacks
        are left out of its mean)."""
        t = self.raw(key)
        m = t.nanmean(0)
        if not normalised:
            return m
        gap = float(self.m_clean.mean() - self.m_corrupted.mean())
        return (m - float(self.m_corrupted.mean())) / (gap if abs(gap) > 1e-12 else float("nan"))

    # -- reading -----------------------------------------------------------------------------
    def _labels(self, panel: Panel) -> list[str]:
        toks = self.tokens.get(panel.position_stack, [[]])[0]
        width = self.values[panel.key].shape[2] if panel.per_position else 0
        return [f"{i}:{toks[i]}" if i < len(toks) else f"{i}" for i in range(width)]

    def top(self, k: int = 10, *, key: str | None = None, normalised: bool = True) -> list[dict[str, Any]]:
        """The ``k`` cells with the largest |mean over pairs| (of every panel, or of ``key``), largest first."""
        rows = [r for r in self._cells(normalised) if key is None or key in (r["panel"], r["kind"])]
        rows = [r for r in rows if r["value"] == r["value"]]  # not NaN
        return sorted(rows, key=lambda r: -abs(r["value"]))[:k]

    def _cells(self, normalised: bool = True) -> list[dict[str, Any]]:
        out = []
        for panel in self.panels:
            m = self.mean(panel.key, normalised=normalised)
            labels = self._labels(panel)
            for idx in torch.cartesian_prod(*[torch.arange(n) for n in m.shape]).reshape(-1, m.dim()).tolist():
                cell = {"panel": panel.key, "stack": panel.stack, "kind": panel.kind, "layer": idx[0]}
                rest = idx[1:]
                if panel.per_position:
                    cell["position"], cell["token"] = rest[0], labels[rest[0]].split(":", 1)[-1]
                    rest = rest[1:]
                if panel.n_heads is not None:
                    cell["head"] = rest[0]
                cell["value"] = float(m[tuple(idx)])
                out.append(cell)
        return out

    def to_frame(self):
        """One row per (panel, pair, layer[, position][, head]) cell: the patched metric, its change and normalised."""
        import numpy as np
        import pandas as pd

        frames = []
        for panel in self.panels:
            raw, norm, eff = self.raw(panel.key), self.normalised(panel.key), self.effect(panel.key)
            idx = np.indices(tuple(raw.shape)).reshape(raw.dim(), -1)
            cols: dict[str, Any] = {"panel": panel.key, "stack": panel.stack, "kind": panel.kind, "pair": idx[0],
                                    "layer": idx[1]}
            axis = 2
            if panel.per_position:
                toks = self.tokens.get(panel.position_stack, [])
                cols["position"] = idx[axis]
                cols["token"] = [toks[p][q] if q < len(toks[p]) else None for p, q in zip(idx[0], idx[axis])]
                axis += 1
            if panel.n_heads is not None:
                cols["head"] = idx[axis]
            cols.update({"value": raw.flatten().numpy(), "effect": eff.flatten().numpy(),
                         "normalised": norm.flatten().numpy()})
            frames.append(pd.DataFrame(cols).dropna(subset=["value"]))
        return pd.concat(frames, ignore_index=True)

    def figure(self, key: str | None = None, *, normalised: bool = True):
        """One heatmap per panel (or only ``key``'s): layers x positions with the input tokens (per-head panels: one row
        per layer and head; ``positions="all"``: layers x heads), the mean over pairs."""
        from ..viz import panel_heatmaps

        chosen = self.panels if key is None else [self.panel(key)]
        drawn = []
        for panel in chosen:
            m = self.mean(panel.key, normalised=normalised)
            if panel.per_position and panel.n_heads is not None:  # [layer, position, head] -> rows (layer, head)
                z = m.permute(0, 2, 1).reshape(-1, m.shape[1])
                y = [f"L{layer} H{h}" for layer in range(m.shape[0]) for h in range(m.shape[2])]
                x, x_title = self._labels(panel), "position: token"
            elif panel.per_position:
                z, y, x, x_title = m, [f"L{layer}" for layer in range(m.shape[0])], self._labels(panel), "position: token"
            elif panel.n_heads is not None:
                z, y, x, x_title = m, [f"L{layer}" for layer in range(m.shape[0])], [f"H{h}" for h in range(m.shape[1])], "head"
            else:
                z, y, x, x_title = m[:, None], [f"L{layer}" for layer in range(m.shape[0])], ["all positions"], ""
            drawn.append({"z": z, "x": x, "y": y, "title": panel.key, "x_title": x_title, "y_title": "layer"})
        what = "normalised metric (1 = clean)" if normalised else "patched metric"
        return panel_heatmaps(drawn, title=f"{METHOD_TITLES.get(self.method, self.method)}, {self.direction} — "
                              f"{self.info.get('model', '')}", colorbar=what, zmid=0.0 if normalised else
                              float(self.m_base.mean()))

    def compare(self, other: PatchingResult, *, key: str | None = None, k: int = 10,
                per_pair: bool = False) -> dict[str, Any]:
        """How well ``other`` (an approximation, say) agrees with this result over the cells both hold: Spearman and
        Pearson correlation of the changes, and the share of this result's top-``k`` cells (by |change|) that are in
        ``other``'s top ``k``; per panel and over all. The cells are those of the heatmap, each change averaged over
        pairs (``per_pair=True``: every pair's cell on its own; with many pairs, ties among cells that restore the
        whole gap then make top-k recall say little)."""
        keys = [p.key for p in self.panels if p.key in other.keys and (key is None or key in (p.key, p.kind))]
        if not keys:
            raise InputError(f"the two results share no panel{f' {key!r}' if key else ''}: {', '.join(self.keys)} vs "
                             f"{', '.join(other.keys)}.")
        out: dict[str, Any] = {}
        a_all, b_all = [], []
        for name in keys:
            a, b = self.effect(name), other.effect(name)
            if a.shape != b.shape:
                raise InputError(f"panel {name} has shape {tuple(a.shape)} here and {tuple(b.shape)} in the other result.")
            if not per_pair:
                a, b = a.nanmean(0), b.nanmean(0)
            both = torch.isfinite(a) & torch.isfinite(b)
            a_all.append(a[both])
            b_all.append(b[both])
            out[name] = _agreement(a[both], b[both], k)
        out["all"] = _agreement(torch.cat(a_all), torch.cat(b_all), k)
        return out

    # -- the contract ------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        tensors = {f"values/{k}": v for k, v in self.values.items()}
        tensors.update({f"magnitudes/{k}": v for k, v in (self.magnitudes or {}).items()})
        tensors.update({"m_clean": self.m_clean, "m_corrupted": self.m_corrupted})
        panels = [{"stack": p.stack, "kind": p.kind, "sites": list(p.sites), "n_heads": p.n_heads,
                   "per_position": p.per_position} for p in self.panels]
        return {"panels": panels, "tokens": self.tokens, "direction": self.direction, "method": self.method,
                "family": self.family}, tensors

    @classmethod
    def _from_state(cls, data: dict[str, Any], tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> PatchingResult:
        panels = [Panel(p["stack"], p["kind"], tuple(p["sites"]), p["n_heads"], p["per_position"]) for p in data["panels"]]
        return cls(values=group(tensors, "values/"), panels=panels, m_clean=tensors["m_clean"],
                   m_corrupted=tensors["m_corrupted"], tokens=data["tokens"], direction=data["direction"],
                   method=data["method"], family=data["family"], info=info,
                   magnitudes=group(tensors, "magnitudes/") or None)

    def __repr__(self) -> str:
        cells = sum(int(torch.isfinite(v).sum()) for v in self.values.values())
        return (f"PatchingResult({self.method}, {self.direction}, {self.family}; {', '.join(self.keys)}; {cells} cells "
                f"over {self.n_pairs} pair{'s' if self.n_pairs != 1 else ''}; metric clean {float(self.m_clean.mean()):.3g}, "
                f"corrupted {float(self.m_corrupted.mean()):.3g})")


def _agreement(a: torch.Tensor, b: torch.Tensor, k: int) -> dict[str, float]:
    import pandas as pd

    n = int(a.numel())
    if n < 2:
        return {"cells": n, "spearman": float("nan"), "pearson": float("nan"), "top_k_recall": float("nan"), "k": k}
    sa, sb = pd.Series(a.double().numpy()), pd.Series(b.double().numpy())
    k = min(k, n)
    top_a = set(a.abs().topk(k).indices.tolist())
    top_b = set(b.abs().topk(k).indices.tolist())
    return {"cells": n, "spearman": float(sa.rank().corr(sb.rank())), "pearson": float(sa.corr(sb)),
            "top_k_recall": len(top_a & top_b) / k, "k": k}
