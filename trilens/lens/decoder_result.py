"""``DecoderLensResult``: per encoder layer, what the decoder outputs and how good it is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import StoreError
from ..results import Result, register_result, renamed

_FIELDS = ("sources", "references", "outputs", "scores")


@register_result
class DecoderLensResult(Result):
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

    layer_metrics = renamed("table", "layer_metrics")

    def table(self, groups: list[Any] | None = None):
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

    def text(self, source: int = 0) -> str:
        """A readable layer -> output listing for one source."""
        lines = [f"source: {self.sources[source]}"]
        if self.references is not None:
            lines.append(f"reference: {self.references[source]}")
        for k, outs in enumerate(self.outputs):
            extra = "".join(f"  {m}={v[k][source]:.2f}" for m, v in self.scores.items())
            lines.append(f"  layer {k:>2}: {outs[source]!r}{extra}")
        return "\n".join(lines)

    def figure(self, metric: str | None = None, groups: list[Any] | None = None):
        """The score per encoder layer (one curve per group, if given)."""
        from ..viz import curves

        if not self.scores:
            raise StoreError("this result has no scores to plot: run the decoder lens with references.")
        metric = metric or next(iter(self.scores))
        if metric not in self.scores:
            raise StoreError(f"no score {metric!r}; this result has {', '.join(self.scores)}.")
        frame = self.table(groups)
        series = ({str(name): g[metric].to_numpy() for name, g in frame.groupby("group")} if groups is not None
                  else {metric: frame[metric].to_numpy()})
        return curves(sorted(frame["layer"].unique().tolist()), series, title=f"decoder lens — {self.info.get('model', '')}",
                      x_title="encoder layer read", y_title=metric)

    def _state(self) -> tuple[dict[str, Any], dict]:
        return {f: getattr(self, f) for f in _FIELDS}, {}

    @classmethod
    def _from_state(cls, data: dict[str, Any], tensors: dict, info: dict[str, Any]) -> DecoderLensResult:
        return cls(**{f: data[f] for f in _FIELDS}, info=info)

    @classmethod
    def _from_legacy(cls, path: Path) -> DecoderLensResult:
        try:
            d = json.loads((Path(path) / "decoder_lens.json").read_text())
        except (OSError, ValueError) as err:
            raise StoreError(f"{path} does not hold a saved decoder-lens result ({err}).") from err
        return cls._from_state(d, {}, d["info"])

    def __repr__(self) -> str:
        return f"DecoderLensResult({len(self.sources)} sources x {self.n_layers} encoder layers, mode={self.info.get('mode')})"

    def _table_html(self) -> str:
        return self.table().to_html(index=False, float_format=lambda v: f"{v:.3f}") if self.scores else ""
