"""``ProbeResult``: per stack, layer, fold and target (task or control), each probe score."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import StoreError
from ..results import Result, register_result, renamed

ROW_FIELDS = ["stack", "layer", "target", "fold", "metric", "value"]


@register_result
class ProbeResult(Result):
    """Scores of layerwise probes: ``to_frame()`` has one row per (stack, layer, target, fold, metric).

    ``table()`` averages over folds per layer (mean, std) and adds ``selectivity`` = task − control.
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

        return pd.DataFrame(self.rows, columns=ROW_FIELDS)

    layer_metrics = renamed("table", "layer_metrics")

    def table(self, metric: str | None = None):
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
        frame = self.table()
        if stack is not None:
            frame = frame[frame["stack"] == stack]
        return int(frame.loc[frame["task_mean"].idxmax(), "layer"])

    def curve(self, stack: str | None = None, target: str = "task"):
        """The numbers behind one line of ``figure()``, as pandas: one row per layer of ``stack`` (the first by
        default) with the ``target`` score's ("task" or "control") mean and std over folds."""
        frame = self.table()
        stack = stack or frame["stack"].iloc[0]
        if f"{target}_mean" not in frame:
            raise StoreError(f"no {target!r} scores here; this result has "
                             f"{', '.join(c.removesuffix('_mean') for c in frame if c.endswith('_mean'))}.")
        rows = frame[frame["stack"] == stack].sort_values("layer")
        std = rows[f"{target}_std"] if f"{target}_std" in rows else float("nan")  # one split: no spread
        return rows[["layer"]].assign(series=target, mean=rows[f"{target}_mean"], std=std).reset_index(drop=True)

    def figure(self, metric: str | None = None, title: str | None = None):
        """Score per layer with ±1 std bands over folds: task and control, one line per stack."""
        from ..viz import curves

        metric = metric or self.metric
        frame = self.table(metric)
        several = frame["stack"].nunique() > 1
        series, bands, dash = {}, {}, {}
        layers = sorted(frame["layer"].unique().tolist())
        for stack, g in frame.groupby("stack"):
            g = g.set_index("layer").reindex(layers)
            for target, style in (("task", "solid"), ("control", "dot")):
                if f"{target}_mean" in g:
                    name = f"{stack} {target}" if several else target
                    series[name], bands[name], dash[name] = g[f"{target}_mean"].to_numpy(), g[f"{target}_std"].to_numpy(), style
        majority = self.info.get("majority")
        return curves(layers, series, bands=bands, dash=dash, y_title=metric,
                      title=title or f"Layerwise probe ({self.info.get('probe')}) — {self.info.get('model', '')}",
                      hline=(majority, "majority class") if majority is not None and metric == "accuracy" else None)

    def _state(self) -> tuple[dict[str, Any], dict]:
        return {"rows": self.rows}, {}

    @classmethod
    def _from_state(cls, data: dict[str, Any], tensors: dict, info: dict[str, Any]) -> ProbeResult:
        return cls(data["rows"], info)

    @classmethod
    def _from_legacy(cls, path: Path) -> ProbeResult:
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

    def _table_html(self) -> str:
        return self.table().to_html(index=False, float_format=lambda v: f"{v:.3f}")
