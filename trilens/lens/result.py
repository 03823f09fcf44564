"""``LensResult``: what each layer predicts at each position, with per-layer metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..atomic import read_saved
from ..errors import InputError
from ..results import Result, group, register_result, renamed

METRICS = ("kl", "cross_entropy", "target_rank", "entropy", "agrees")
# what figure(metric=) colours the cells by: metric -> (unit, colour scale); None = the top-1 probability
SHOWN = {None: ("top-1 probability", "Blues"), "entropy": ("nats", "Viridis"), "kl": ("nats", "Reds"),
         "cross_entropy": ("nats", "Reds"), "target_rank": ("rank (0 = top)", "Viridis_r")}


def settled_layer(hit: torch.Tensor) -> torch.Tensor:
    """``hit [layer, n]`` (bool) -> per column, the first layer from which every later layer hits; -1 if the last misses."""
    # reversed cumulative AND: stays True only while every later layer hits
    from_here = hit.flip(0).int().cumprod(0).flip(0).bool()
    first = from_here.int().argmax(0)
    return torch.where(from_here[-1], first, torch.full_like(first, -1))


@register_result
class LensResult(Result):
    """Per layer (0 = embeddings), sequence and position: the lens's top tokens and metrics.

    ``kl`` is KL(p_final || p_layer) in nats, ``cross_entropy`` and ``target_rank`` are for the
    target token (NaN / -1 where a position has none), ``agrees`` says whether the layer's top-1
    equals the final prediction. ``mask`` marks real (non-padding) positions.
    """

    def __init__(self, *, top_ids: torch.Tensor, top_probs: torch.Tensor, metrics: dict[str, torch.Tensor],
                 mask: torch.Tensor, input_ids: torch.Tensor, targets: torch.Tensor, vocab: dict[int, str],
                 info: dict[str, Any]):
        self.top_ids, self.top_probs = top_ids, top_probs
        self.metrics = metrics
        self.mask, self.input_ids, self.targets = mask, input_ids, targets
        self.vocab = vocab
        self.info = info

    @property
    def n_layers(self) -> int:
        """Number of lens layers (the embeddings plus every block)."""
        return self.top_ids.shape[0]

    def token(self, i: int) -> str:
        return self.vocab.get(int(i), str(int(i)))

    layer_metrics = renamed("table", "layer_metrics")

    def table(self):
        """One row per layer: each metric averaged over real positions (target metrics over positions with a target)."""
        import pandas as pd

        rows = []
        real = self.mask
        has_target = real & (self.targets >= 0)
        for layer in range(self.n_layers):
            row: dict[str, Any] = {"layer": layer}
            for name in (m for m in METRICS if m in self.metrics):
                values = self.metrics[name]
                sel = has_target if name in ("cross_entropy", "target_rank") else real
                v = values[layer][sel].float()
                row[name] = float(v.mean()) if v.numel() else float("nan")
            rows.append(row)
        return pd.DataFrame(rows)

    def at(self, positions: Any) -> dict[str, torch.Tensor]:
        """Metrics ``[layer, sequence]`` at one position per sequence (e.g. each answer's position),
        plus ``top_id`` and ``top_prob`` (the layer's top-1) and ``settled``: per sequence, the first
        layer from which the target stays top-1 up to the last layer (-1 if the last layer misses it)."""
        pos = torch.as_tensor(positions, dtype=torch.long)
        if pos.shape != (self.mask.shape[0],):
            raise InputError(f"positions needs one position per sequence ({self.mask.shape[0]}), not shape {tuple(pos.shape)}.")
        rows = torch.arange(len(pos))
        if not bool(self.mask[rows, pos].all()):
            bad = (~self.mask[rows, pos]).nonzero().flatten().tolist()
            raise InputError(f"positions of sequences {bad[:5]} are padding, not tokens.")
        out = {m: v[:, rows, pos] for m, v in self.metrics.items()}
        out["top_id"], out["top_prob"] = self.top_ids[:, rows, pos, 0], self.top_probs[:, rows, pos, 0]
        out["settled"] = settled_layer(out["target_rank"] == 0)
        return out

    def to_frame(self):
        """One row per (layer, sequence, position) at real positions: input, target, top token, metrics."""
        import pandas as pd

        idx = self.mask.nonzero().tolist()
        rows = []
        for layer in range(self.n_layers):
            for b, p in idx:
                tgt = int(self.targets[b, p])
                rows.append({"layer": layer, "sequence": b, "position": p, "input": self.token(self.input_ids[b, p]),
                             "target": self.token(tgt) if tgt >= 0 else None,
                             "top_token": self.token(self.top_ids[layer, b, p, 0]),
                             "top_prob": float(self.top_probs[layer, b, p, 0]),
                             **{m: (bool if m == "agrees" else float)(self.metrics[m][layer, b, p])
                                for m in METRICS if m in self.metrics}})
        return pd.DataFrame(rows)

    def tokens(self, sequence: int = 0) -> list[str]:
        """The input tokens of ``sequence`` (its real positions: the columns of ``values`` and ``figure``)."""
        self._check_sequence(sequence)
        return [self.token(i) for i in self.input_ids[sequence][self.mask[sequence]].tolist()]

    def target_tokens(self, sequence: int = 0) -> list[str]:
        """The token each real position of ``sequence`` is scored against ("" where none)."""
        self._check_sequence(sequence)
        return [self.token(t) if t >= 0 else "" for t in self.targets[sequence][self.mask[sequence]].tolist()]

    def values(self, metric: str | None = None, sequence: int = 0) -> torch.Tensor:
        """``[layer, position]`` float32 over ``sequence``'s real positions: the top-1 probability, or ``metric``
        (NaN where it is undefined: a target rank or cross-entropy at a position without a target)."""
        self._check_sequence(sequence)
        if metric is not None and metric not in self.metrics:
            raise InputError(f"no metric {metric!r}; this result has {', '.join(self.metrics)}.")
        cols = self.mask[sequence].nonzero().flatten()
        if metric is None:
            return self.top_probs[:, sequence, cols, 0].float()
        v = self.metrics[metric][:, sequence, cols].float()
        if metric in ("target_rank", "cross_entropy"):
            v = v.masked_fill((self.targets[sequence, cols] < 0)[None, :], float("nan"))
        return v

    def figure(self, sequence: int = 0, metric: str | None = None):
        """Heatmap layers x positions of one sequence: the top-1 token in each cell, the top tokens with their
        probabilities on hover; the colour is the top-1 probability, or ``metric`` (see ``SHOWN``)."""
        from ..viz import layer_heatmap

        z = self.values(metric, sequence)
        cols = self.mask[sequence].nonzero().flatten().tolist()
        text = [[self.token(self.top_ids[lay, sequence, c, 0]) for c in cols] for lay in range(self.n_layers)]
        hover = [["<br>".join(f"{self.token(i)} {float(p):.3f}" for i, p in zip(self.top_ids[lay, sequence, c].tolist(),
                                                                               self.top_probs[lay, sequence, c]))
                  for c in cols] for lay in range(self.n_layers)]
        unit, colours = SHOWN.get(metric, (metric, "Viridis"))
        return layer_heatmap(z, self.tokens(sequence), text=text, hover=hover,
                             colorbar=unit, colorscale=colours,
                             title=f"{self.info.get('lens', 'logit')} lens — {metric or 'top-1 probability'} "
                                   f"(cell: top-1 token; hover: top {self.top_ids.shape[-1]})")

    def _check_sequence(self, sequence: int) -> None:
        if not 0 <= sequence < self.mask.shape[0]:
            raise InputError(f"sequence {sequence} does not exist; this result holds {self.mask.shape[0]}.")

    def curve(self, metrics: tuple[str, ...] = ("kl", "cross_entropy", "entropy")):
        """The per-layer metric curves (means over real positions), as pandas: one row per (metric, layer)."""
        frame = self.table()
        missing = [m for m in metrics if m not in frame]
        if missing:
            raise InputError(f"no metric {missing[0]!r}; this result has {', '.join(c for c in frame if c != 'layer')}.")
        long = frame.melt(id_vars="layer", value_vars=list(metrics), var_name="series", value_name="mean")
        return long[["series", "layer", "mean"]]

    def curve_figure(self, metrics: tuple[str, ...] = ("kl", "cross_entropy", "entropy")):
        """``curve(metrics)`` drawn: one line per metric over the layers."""
        from ..viz import curves

        frame = self.curve(metrics)
        return curves(sorted(frame["layer"].unique().tolist()),
                      {m: g.sort_values("layer")["mean"].to_numpy() for m, g in frame.groupby("series", sort=False)},
                      title=f"{self.info.get('lens', 'lens')} lens per layer", x_title="layer", y_title="nats")

    curves = renamed("curve_figure", "curves")

    def _state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        tensors = {"top_ids": self.top_ids, "top_probs": self.top_probs, "mask": self.mask.to(torch.uint8),
                   "input_ids": self.input_ids, "targets": self.targets,
                   **{f"metric/{k}": (v.to(torch.uint8) if v.dtype == torch.bool else v) for k, v in self.metrics.items()}}
        return {"vocab": {str(k): v for k, v in self.vocab.items()}}, tensors

    @classmethod
    def _from_state(cls, data: dict[str, Any], tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> LensResult:
        metrics = group(tensors, "metric/")
        if "agrees" in metrics:
            metrics["agrees"] = metrics["agrees"].bool()
        return cls(top_ids=tensors["top_ids"], top_probs=tensors["top_probs"], metrics=metrics, mask=tensors["mask"].bool(),
                   input_ids=tensors["input_ids"], targets=tensors["targets"],
                   vocab={int(k): v for k, v in data["vocab"].items()}, info=info)

    @classmethod
    def _from_legacy(cls, path: Path) -> LensResult:
        meta, tensors = read_saved(path, "lens.json", "lens.safetensors", "LensResult")
        return cls._from_state(meta, tensors, meta["info"])

    def __repr__(self) -> str:
        b, p = self.mask.shape
        return f"LensResult({self.info.get('lens')} lens, {self.n_layers} layers, {b} sequences x {p} positions)"

    def _table_html(self) -> str:
        return self.table().to_html(index=False, float_format=lambda v: f"{v:.3f}")
