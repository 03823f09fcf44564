"""``LensResult``: what each layer predicts at each position, with per-layer metrics."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..atomic import atomic_dir, read_saved
from ..errors import InputError

METRICS = ("kl", "cross_entropy", "target_rank", "entropy", "agrees")


def settled_layer(hit: torch.Tensor) -> torch.Tensor:
    """``hit [layer, n]`` (bool) -> per column, the first layer from which every later layer hits; -1 if the last misses."""
    # reversed cumulative AND: stays True only while every later layer hits
    from_here = hit.flip(0).int().cumprod(0).flip(0).bool()
    first = from_here.int().argmax(0)
    return torch.where(from_here[-1], first, torch.full_like(first, -1))


class LensResult:
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

    def layer_metrics(self):
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

    def figure(self, sequence: int = 0, metric: str | None = None):
        """Heatmap layers x positions of one sequence: the top token and its probability in each cell
        (colour: top-1 probability, or ``metric``)."""
        import plotly.graph_objects as go

        n = int(self.mask[sequence].sum())
        cols = self.mask[sequence].nonzero().flatten().tolist()[:n]
        z = (self.top_probs[:, sequence, cols, 0] if metric is None else self.metrics[metric][:, sequence, cols]).float()
        text = [[f"{self.token(self.top_ids[lay, sequence, c, 0])}<br>{float(self.top_probs[lay, sequence, c, 0]):.2f}"
                 for c in cols] for lay in range(self.n_layers)]
        labels = [f"{i}:{self.token(self.input_ids[sequence, c])}" for i, c in enumerate(cols)]
        fig = go.Figure(go.Heatmap(z=z.tolist(), x=labels, y=list(range(self.n_layers)), text=text,
                                   texttemplate="%{text}", colorscale="Blues", colorbar={"title": metric or "top-1 prob"}))
        fig.update_layout(title=f"{self.info.get('lens', 'lens')} lens — {self.info.get('model', '')}",
                          xaxis_title="position: input token", yaxis_title="layer (0 = embeddings)")
        return fig

    def curves(self, metrics: tuple[str, ...] = ("kl", "cross_entropy", "entropy")):
        """Per-layer metric curves (means over real positions)."""
        import plotly.graph_objects as go

        frame = self.layer_metrics()
        fig = go.Figure([go.Scatter(x=frame["layer"], y=frame[m], mode="lines+markers", name=m) for m in metrics])
        fig.update_layout(title=f"{self.info.get('lens', 'lens')} lens per layer", xaxis_title="layer", yaxis_title="nats")
        return fig

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        tensors = {"top_ids": self.top_ids, "top_probs": self.top_probs, "mask": self.mask.to(torch.uint8),
                   "input_ids": self.input_ids, "targets": self.targets,
                   **{f"metric/{k}": (v.to(torch.uint8) if v.dtype == torch.bool else v) for k, v in self.metrics.items()}}
        with atomic_dir(path) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, tmp / "lens.safetensors")
            (tmp / "lens.json").write_text(json.dumps({"format": "trilens.LensResult/1", "info": self.info,
                                                       "vocab": {str(k): v for k, v in self.vocab.items()}}))
        return path

    @classmethod
    def load(cls, path: str | Path) -> LensResult:
        meta, t = read_saved(path, "lens.json", "lens.safetensors", "LensResult")
        metrics = {k[len("metric/"):]: v for k, v in t.items() if k.startswith("metric/")}
        if "agrees" in metrics:
            metrics["agrees"] = metrics["agrees"].bool()
        return cls(top_ids=t["top_ids"], top_probs=t["top_probs"], metrics=metrics, mask=t["mask"].bool(),
                   input_ids=t["input_ids"], targets=t["targets"], vocab={int(k): v for k, v in meta["vocab"].items()},
                   info=meta["info"])

    def __repr__(self) -> str:
        b, p = self.mask.shape
        return f"LensResult({self.info.get('lens')} lens, {self.n_layers} layers, {b} sequences x {p} positions)"

    def _repr_html_(self) -> str:
        frame = self.layer_metrics()
        return f"<p>{html.escape(repr(self))}</p>" + frame.to_html(index=False, float_format=lambda v: f"{v:.3f}")
