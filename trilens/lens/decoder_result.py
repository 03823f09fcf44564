"""``DecoderLensResult``: per encoder layer, what the decoder outputs and how good it is."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from ..atomic import atomic_dir
from ..errors import StoreError


class DecoderLensResult:
    """``outputs[k][i]``: the decoder's output for source i when it reads encoder layer k (0 = embeddings).

    ``scores[metric][k][i]``: exact_match and chrf (with references), target_logprob and
    token_accuracy (teacher mode).
    """

    def __init__(self, *, sources: list[str], references: list[str] | None, outputs: list[list[str]],
                 scores: dict[str, list[list[float]]], info: dict[str, Any]):
        self.sources, self.references, self.outputs = sources, references, outputs
        self.scores = scores
        self.info = info

    @property
    def n_layers(self) -> int:
        return len(self.outputs)

    def layer_metrics(self, groups: list[Any] | None = None):
        """One row per layer (and group, e.g. formula depth): each score averaged over sources."""
        frame = self.to_frame()
        if groups is not None:
            frame["group"] = [groups[i] for i in frame["source_index"]]
            keys = ["layer", "group"]
        else:
            keys = ["layer"]
        cols = [c for c in self.scores]
        return frame.groupby(keys, as_index=False)[cols].mean() if cols else frame[keys].drop_duplicates()

    def to_frame(self):
        """One row per (layer, source): source, reference, output and every score."""
        import pandas as pd

        rows = []
        for k, outs in enumerate(self.outputs):
            for i, out in enumerate(outs):
                rows.append({"layer": k, "source_index": i, "source": self.sources[i],
                             "reference": self.references[i] if self.references is not None else None, "output": out,
                             **{m: v[k][i] for m, v in self.scores.items()}})
        return pd.DataFrame(rows)

    def table(self, source: int = 0) -> str:
        """A readable layer -> output table for one source."""
        lines = [f"source: {self.sources[source]}"]
        if self.references is not None:
            lines.append(f"reference: {self.references[source]}")
        for k, outs in enumerate(self.outputs):
            extra = "".join(f"  {m}={v[k][source]:.2f}" for m, v in self.scores.items())
            lines.append(f"  layer {k:>2}: {outs[source]!r}{extra}")
        return "\n".join(lines)

    def figure(self, metric: str | None = None, groups: list[Any] | None = None):
        """The score per encoder layer (one curve per group, if given)."""
        import plotly.graph_objects as go

        if not self.scores:
            raise StoreError("this result has no scores to plot: run the decoder lens with references.")
        metric = metric or next(iter(self.scores))
        frame = self.layer_metrics(groups)
        traces = ([go.Scatter(x=g["layer"], y=g[metric], mode="lines+markers", name=str(name))
                   for name, g in frame.groupby("group")] if groups is not None
                  else [go.Scatter(x=frame["layer"], y=frame[metric], mode="lines+markers", name=metric)])
        fig = go.Figure(traces)
        fig.update_layout(title=f"decoder lens — {self.info.get('model', '')}", xaxis_title="encoder layer read",
                          yaxis_title=metric)
        return fig

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        with atomic_dir(path) as tmp:
            (tmp / "decoder_lens.json").write_text(json.dumps({
                "format": "trilens.DecoderLensResult/1", "sources": self.sources, "references": self.references,
                "outputs": self.outputs, "scores": self.scores, "info": self.info}))
        return path

    @classmethod
    def load(cls, path: str | Path) -> DecoderLensResult:
        try:
            d = json.loads((Path(path) / "decoder_lens.json").read_text())
        except (OSError, ValueError) as err:
            raise StoreError(f"{path} does not hold a saved decoder-lens result ({err}).") from err
        return cls(sources=d["sources"], references=d["references"], outputs=d["outputs"], scores=d["scores"], info=d["info"])

    def __repr__(self) -> str:
        return f"DecoderLensResult({len(self.sources)} sources x {self.n_layers} encoder layers, mode={self.info.get('mode')})"

    def _repr_html_(self) -> str:
        body = self.layer_metrics().to_html(index=False) if self.scores else ""
        return f"<p>{html.escape(repr(self))}</p>{body}"
