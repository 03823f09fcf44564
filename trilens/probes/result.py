"""``ProbeResult``: per stack, layer, fold and target (task or control), each probe score."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from ..atomic import atomic_dir
from ..errors import StoreError


class ProbeResult:
    """Scores of layerwise probes: ``to_frame()`` has one row per (stack, layer, target, fold, metric).

    ``layer_metrics()`` averages over folds (mean, std) and adds ``selectivity`` = task − control.
    """

    def __init__(self, rows: list[dict[str, Any]], info: dict[str, Any]):
        self.rows = rows
        self.info = info

    @property
    def metric(self) -> str:
        """The headline metric: accuracy for classification, R^2 for regression."""
        return "r2" if self.info.get("kind") == "regression" else "accuracy"

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows, columns=["stack", "layer", "target", "fold", "metric", "value"])

    def layer_metrics(self, metric: str | None = None):
        """One row per (stack, layer): mean and std over folds of the task (and control) score, and selectivity."""
        metric = metric or self.metric
        frame = self.to_frame()
        frame = frame[frame["metric"] == metric]
        if frame.empty:
            raise StoreError(f"this result has no {metric!r} scores; it has {sorted(set(r['metric'] for r in self.rows))}.")
        agg = frame.groupby(["stack", "layer", "target"])["value"].agg(["mean", "std"]).reset_index()
        wide = agg.pivot_table(index=["stack", "layer"], columns="target", values=["mean", "std"])
        wide.columns = [f"{t}_{s}" for s, t in wide.columns]
        wide = wide.reset_index()
        if "control_mean" in wide:
            wide["selectivity"] = wide["task_mean"] - wide["control_mean"]
        order = [c for c in ("stack", "layer", "task_mean", "task_std", "control_mean", "control_std", "selectivity")
                 if c in wide]
        return wide[order].fillna({c: 0.0 for c in order if c.endswith("_std")})

    def best_layer(self, stack: str | None = None) -> int:
        """The layer with the highest mean task score (the first, on ties)."""
        frame = self.layer_metrics()
        if stack is not None:
            frame = frame[frame["stack"] == stack]
        return int(frame.loc[frame["task_mean"].idxmax(), "layer"])

    def curve(self, stack: str | None = None, target: str = "task") -> list[float]:
        """The mean score per layer of one stack (the first stack by default)."""
        frame = self.layer_metrics()
        stack = stack or frame["stack"].iloc[0]
        return frame[frame["stack"] == stack].sort_values("layer")[f"{target}_mean"].tolist()

    def figure(self, metric: str | None = None, title: str | None = None):
        """Score per layer with ±1 std bands over folds: task and control, one panel line per stack."""
        import plotly.graph_objects as go

        metric = metric or self.metric
        frame = self.layer_metrics(metric)
        fig = go.Figure()
        for stack, g in frame.groupby("stack"):
            for target, dash in (("task", "solid"), ("control", "dot")):
                if f"{target}_mean" not in g:
                    continue
                mean, std = g[f"{target}_mean"], g[f"{target}_std"]
                name = f"{stack} {target}" if frame["stack"].nunique() > 1 else target
                fig.add_trace(go.Scatter(x=list(g["layer"]) + list(g["layer"])[::-1], y=list(mean + std) + list(mean - std)[::-1],
                                         fill="toself", opacity=0.2, line={"width": 0}, showlegend=False, hoverinfo="skip",
                                         name=f"{name} ±1 std"))
                fig.add_trace(go.Scatter(x=g["layer"], y=mean, mode="lines+markers", name=name, line={"dash": dash}))
        if self.info.get("majority") is not None and metric == "accuracy":
            fig.add_hline(y=self.info["majority"], line_dash="dash", line_color="grey", annotation_text="majority class")
        fig.update_layout(title=title or f"Layerwise probe ({self.info.get('probe')}) — {self.info.get('model', '')}",
                          xaxis_title="layer (0 = embeddings)", yaxis_title=metric)
        return fig

    def save(self, path: str | Path, figure: bool = False) -> Path:
        """Write ``probe.json`` (and with ``figure``, ``probe.html``: the figure, self-contained) to the folder ``path``."""
        path = Path(path)
        with atomic_dir(path) as tmp:
            (tmp / "probe.json").write_text(json.dumps({"format": "trilens.ProbeResult/1", "info": self.info, "rows": self.rows}))
            if figure:
                self.figure().write_html(tmp / "probe.html", include_plotlyjs=True)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ProbeResult:
        try:
            d = json.loads((Path(path) / "probe.json").read_text())
        except (OSError, ValueError) as err:
            raise StoreError(f"{path} does not hold a saved probe result ({err}).") from err
        if d.get("format") != "trilens.ProbeResult/1":
            raise StoreError(f"{path} holds {d.get('format')!r}, not a trilens.ProbeResult/1.")
        return cls(d["rows"], d["info"])

    def __repr__(self) -> str:
        stacks = sorted({r["stack"] for r in self.rows})
        return (f"ProbeResult({self.info.get('probe')} probe, {self.info.get('kind')}, stacks {stacks}, "
                f"{self.info.get('folds')} fold(s), n={self.info.get('n')})")

    def _repr_html_(self) -> str:
        return f"<p>{html.escape(repr(self))}</p>" + self.layer_metrics().to_html(index=False, float_format=lambda v: f"{v:.3f}")
