"""``AttentionStepsResult``: per layer, head and generation step, attention metrics and source sensitivity."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..errors import InputError
from ..results import Result, group, register_result, renamed

SENSITIVITY = {"sensitivity": "attention", "residual_sensitivity": "residual"}
TITLES = {
    "source_mass": "source attention mass", "source_mass_no_sink": "source mass without the first token",
    "sink": "mass on the first token", "entropy": "attention entropy (nats)", "previous": "mass on the previous token",
    "cross_entropy": "cross-attention entropy (nats)", "cross_sink": "cross-attention mass on the first source token",
    "cross_spread": "cross-attention spread (exp(entropy) / N)", "cross_coverage": "source coverage so far",
    "sensitivity": "attention output's source sensitivity S_l(t) / S_l(1)",
    "residual_sensitivity": "residual stream's source sensitivity S_l(t) / S_l(1)",
}


@register_result
class AttentionStepsResult(Result):
    """Per layer, head and generation step t (1-based): the decoder's attention metrics at the position that predicts
    step t, and (without heads) the source sensitivity of its attention output and residual stream.

    Metrics ``[layer, sequence, head, step]``: ``source_mass`` (decoder-only: attention on the prompt; under uniform
    causal attention N / (N + t - 1), in ``baseline``), ``source_mass_no_sink``, ``sink``, ``entropy``, ``previous``;
    encoder-decoders add ``cross_entropy``, ``cross_sink``, ``cross_spread`` and ``cross_coverage``. Sensitivities
    ``[layer, sequence, step]`` are raw Frobenius norms; ``values("sensitivity")`` normalises by step 1. Trilens's own
    definitions after Fu et al. 2023 ("Decoder-Only or Encoder-Decoder?"). NaN where a sequence has no such step.
    """

    def __init__(self, *, metrics: dict[str, torch.Tensor], sensitivity: dict[str, torch.Tensor] | None,
                 baseline: torch.Tensor | None, valid: torch.Tensor, source_lengths: torch.Tensor,
                 source_tokens: list[list[str]], step_tokens: list[list[str]], family: str, info: dict[str, Any]):
        self.metrics, self.sensitivity, self.baseline = metrics, sensitivity or {}, baseline
        self.valid, self.source_lengths = valid, source_lengths
        self.source_tokens, self.step_tokens, self.family, self.info = source_tokens, step_tokens, family, info

    @property
    def n_layers(self) -> int:
        return next(iter(self.metrics.values())).shape[0]

    @property
    def n_steps(self) -> int:
        return self.valid.shape[1]

    @property
    def names(self) -> list[str]:
        """What ``values`` can give: the attention metrics, then the sensitivities (normalised) when computed."""
        return list(self.metrics) + [n for n, v in SENSITIVITY.items() if v in self.sensitivity]

    def values(self, name: str, *, normalised: bool = True) -> torch.Tensor:
        """``[layer, sequence, head, step]`` of one metric (sensitivities have one "head": ``[layer, sequence, 1, step]``,
        divided by step 1's unless ``normalised=False``)."""
        if name in self.metrics:
            return self.metrics[name]
        if name in SENSITIVITY and SENSITIVITY[name] in self.sensitivity:
            s = self.sensitivity[SENSITIVITY[name]]
            return (s / s[..., :1] if normalised else s)[:, :, None]
        raise InputError(f"no metric {name!r} in this result; it has {', '.join(self.names)}."
                         + (" Sensitivities need sensitivity= other than None." if name in SENSITIVITY else ""))

    def standard_error(self, name: str) -> torch.Tensor:
        """``[layer, sequence, 1, step]``: the random-projection standard error of a raw sensitivity (0 where exact)."""
        if name not in SENSITIVITY or SENSITIVITY[name] not in self.sensitivity:
            raise InputError(f"standard errors exist for the sensitivities only ({', '.join(SENSITIVITY)}), not {name!r}.")
        return self.sensitivity[SENSITIVITY[name] + "_se"][:, :, None]

    def curve(self, name: str, *, layer: int | None = None, by: str = "layer"):
        """The numbers behind ``figure(name)``, as pandas: one row per (series, step) with the mean over sequences,
        its standard error and the count. ``by="layer"``: one series per layer (head mean); ``by="head"``: one per
        head of ``layer``; ``by="all"``: one series, the mean over layers and heads."""
        import pandas as pd

        c = self._curve_tensors(name, layer, by)
        labels = self._series_labels(c["mean"].shape[0], layer, by)
        n_series, n_steps = c["mean"].shape
        return pd.DataFrame({"series": [label for label in labels for _ in range(n_steps)],
                             "step": list(range(1, n_steps + 1)) * n_series, "mean": c["mean"].flatten().numpy(),
                             "se": c["se"].flatten().numpy(), "n": c["n"].flatten().numpy()})

    @staticmethod
    def _series_labels(n: int, layer: int | None, by: str) -> list[str]:
        label = {"layer": lambda i: f"layer {i}" if layer is None else f"layer {layer}", "head": lambda i: f"head {i}",
                 "all": lambda i: "mean"}[by]
        return [label(i) for i in range(n)]

    def _curve_tensors(self, name: str, layer: int | None, by: str) -> dict[str, torch.Tensor]:
        """``{"mean", "se", "n"}``, each ``[series, step]`` (see ``curve``)."""
        v = self.values(name)
        if by == "head":
            if layer is None:
                raise InputError("by='head' shows the heads of one layer: pass layer=.")
            v = v[self._layer(layer)]  # [B, H, T] -> series = heads
            v = v.transpose(0, 1)
        elif by == "layer":
            v = v.nanmean(2) if layer is None else v[self._layer(layer)].nanmean(1)[None]
        elif by == "all":
            v = v.nanmean((0, 2))[None]
        else:
            raise InputError(f"by must be 'layer', 'head' or 'all', not {by!r}.")
        ok = ~v.isnan()
        n = ok.sum(1)
        mean = v.nanmean(1)
        var = ((v - mean[:, None]).pow(2).nan_to_num(0).sum(1) / (n - 1).clamp_min(1))
        return {"mean": mean, "se": (var / n.clamp_min(1)).sqrt().masked_fill(n < 2, 0.0), "n": n}

    step_table = renamed("table", "step_table")

    def table(self, steps: Sequence[int] | None = None):
        """Per metric, the mean over sequences, layers and heads at ``steps`` (1-based; those beyond the longest
        sequence left out; default: the first, middle and last), and the uniform baseline where there is one."""
        import pandas as pd

        if steps is None:
            steps = sorted({1, max(1, self.n_steps // 2), self.n_steps})
        shown = [t for t in steps if 1 <= t <= self.n_steps]
        means = {name: self._curve_tensors(name, None, "all")["mean"][0] for name in self.names}
        if self.baseline is not None:
            means["uniform baseline"] = self.baseline.nanmean(0)
        return pd.DataFrame([{"metric": name, **{f"t={t}": float(m[t - 1]) for t in shown}} for name, m in means.items()])

    def grid(self, name: str) -> torch.Tensor:
        """``[layer, head]``: the metric's mean over sequences and steps."""
        return self.values(name).nanmean((1, 3))

    def _layer(self, layer: int) -> int:
        if not -self.n_layers <= layer < self.n_layers:
            raise InputError(f"layer {layer} does not exist; this result has {self.n_layers} decoder layers.")
        return layer % self.n_layers

    def to_frame(self):
        """One row per (metric, layer, sequence, head, step) where the step exists; head -1 for sensitivities."""
        import pandas as pd

        frames = []
        for name in self.names:
            v = self.values(name)
            idx = (~v.isnan()).nonzero()
            frames.append(pd.DataFrame({
                "metric": name, "layer": idx[:, 0].numpy(), "sequence": idx[:, 1].numpy(),
                "head": idx[:, 2].numpy() if v.shape[2] > 1 else -1, "step": idx[:, 3].numpy() + 1,
                "value": v[tuple(idx.T)].numpy()}))
        return pd.concat(frames, ignore_index=True)

    def figure(self, name: str | None = None, *, by: str = "layer", layer: int | None = None):
        """Per-step curves with ±1 standard-error bands over sequences (default: source mass for decoder-only models,
        normalised attention-output sensitivity for encoder-decoders, or cross-attention entropy without it); the
        uniform-attention baseline beside the source mass."""
        from ..viz import curves

        name = name or self._default_name()
        c = self._curve_tensors(name, layer, by)
        labels = self._series_labels(len(c["mean"]), layer, by)
        series = {label: c["mean"][i] for i, label in enumerate(labels)}
        bands = {label: c["se"][i] for i, label in enumerate(labels)}
        dash = {}
        if name == "source_mass" and self.baseline is not None:
            series["uniform attention"] = self.baseline.nanmean(0)
            dash["uniform attention"] = "dot"
        steps = list(range(1, self.n_steps + 1))
        fig = curves(steps, series, bands=bands, dash=dash, x_title="generation step t", y_title=name,
                     title=f"{TITLES.get(name, name)} — {self.info.get('model', '')} (after Fu et al. 2023)")
        return fig.update_xaxes(tick0=1, dtick=max(1, round(self.n_steps / 12)))  # whole steps

    def grid_figure(self, name: str | None = None):
        """Layer x head grid of the metric's mean over sequences and steps."""
        from ..viz import head_grid

        name = name or ("source_mass" if "source_mass" in self.metrics else "cross_entropy")
        if name in SENSITIVITY:
            raise InputError("sensitivities have no heads: use figure() for their per-step curves.")
        return head_grid(self.grid(name), colorbar=name, title=f"{TITLES.get(name, name)}, mean over steps")

    def _default_name(self) -> str:
        if "source_mass" in self.metrics:
            return "source_mass"
        return "sensitivity" if "attention" in self.sensitivity else "cross_entropy"

    def _state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        tensors = {**{f"metric/{k}": v for k, v in self.metrics.items()},
                   **{f"sensitivity/{k}": (v.to(torch.uint8) if v.dtype == torch.bool else v) for k, v in self.sensitivity.items()},
                   "valid": self.valid.to(torch.uint8), "source_lengths": self.source_lengths}
        if self.baseline is not None:
            tensors["baseline"] = self.baseline
        return {"source_tokens": self.source_tokens, "step_tokens": self.step_tokens, "family": self.family,
                "metrics": list(self.metrics)}, tensors

    @classmethod
    def _from_state(cls, data: dict[str, Any], tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> AttentionStepsResult:
        sens = group(tensors, "sensitivity/")
        if "exact" in sens:
            sens["exact"] = sens["exact"].bool()
        metrics = group(tensors, "metric/")
        return cls(metrics={k: metrics[k] for k in data["metrics"]}, sensitivity=sens, baseline=tensors.get("baseline"),
                   valid=tensors["valid"].bool(), source_lengths=tensors["source_lengths"],
                   source_tokens=data["source_tokens"], step_tokens=data["step_tokens"], family=data["family"], info=info)

    def __repr__(self) -> str:
        return (f"AttentionStepsResult({self.family}, {self.valid.shape[0]} sequences, up to {self.n_steps} steps, "
                f"{self.n_layers} decoder layers; {', '.join(self.names)})")

    def _table_html(self) -> str:
        table = self.table()
        return table.to_html(index=False, float_format=lambda v: f"{v:.3f}")
