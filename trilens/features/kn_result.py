"""``KnowledgeNeurons``: each class's knowledge neurons, their attributions, intervention effects and the overlap with
a GRADIEND's largest decoder weights."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..results import Result, register_result, renamed


@register_result
class KnowledgeNeurons(Result):
    """Per class ``c``: ``mean_attribution[c] [layer, d_ff]`` (over its prompts), ``kept_share[c] [layer, d_ff]`` (the
    share of prompts that kept each neuron), ``deltas[c] [prompt, layer]`` (captum's convergence deltas) and
    ``neurons[c]`` ((layer, unit) pairs); ``effects`` the intervention table; ``overlap`` (or None) with GRADIEND."""

    def __init__(self, *, classes: Sequence[str], layers: list[int], mean_attribution: dict[str, torch.Tensor],
                 deltas: dict[str, torch.Tensor], kept_share: dict[str, torch.Tensor],
                 neurons: dict[str, list[tuple[int, int]]], effects: list[dict[str, Any]], overlap: dict[str, Any] | None,
                 info: dict[str, Any]):
        self.classes, self.layers = tuple(classes), layers
        self.mean_attribution, self.deltas, self.kept_share = mean_attribution, deltas, kept_share
        self.neurons = {c: [tuple(n) for n in v] for c, v in neurons.items()}
        self.effects, self.overlap, self.info = effects, overlap, info

    def __repr__(self) -> str:
        counts = ", ".join(f"{c}: {len(v)}" for c, v in self.neurons.items())
        extra = ""
        if self.overlap and self.overlap.get("fraction") is not None:
            extra = f"; overlap with GRADIEND's top {self.overlap['k']}: {self.overlap['overlap']}"
        return f"KnowledgeNeurons({counts} neurons over layers {self.layers}{extra})"

    def to_frame(self):
        """One row per knowledge neuron: class, layer, unit, share of prompts, mean attribution."""
        import pandas as pd

        rows = []
        for c, units in self.neurons.items():
            for layer, unit in units:
                li = self.layers.index(layer)
                rows.append({"class": c, "layer": layer, "unit": unit, "share": float(self.kept_share[c][li, unit]),
                             "mean_attribution": float(self.mean_attribution[c][li, unit])})
        return pd.DataFrame(rows, columns=["class", "layer", "unit", "share", "mean_attribution"])

    effects_frame = renamed("table", "effects_frame")

    def table(self):
        import pandas as pd

        return pd.DataFrame(self.effects)

    def figure(self, cls: str | None = None):
        """Mean attribution of every FFN neuron (layer x unit) for class ``cls`` (default: the first)."""
        from ..viz import layer_heatmap

        c = cls or self.classes[0]
        values = self.mean_attribution[c]
        return layer_heatmap(values, [str(i) for i in range(values.shape[1])], layers=self.layers,
                             title=f"Knowledge-neuron attribution for {c} ({len(self.neurons[c])} kept)",
                             colorbar="IG attribution", x_title="FFN neuron", y_title="layer")

    def _state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        tensors = {}
        for i, c in enumerate(self.classes):
            tensors[f"mean_attribution.{i}"] = self.mean_attribution[c]
            tensors[f"kept_share.{i}"] = self.kept_share[c]
            tensors[f"deltas.{i}"] = self.deltas[c]
        data = {"classes": list(self.classes), "layers": self.layers,
                "neurons": {c: [list(n) for n in v] for c, v in self.neurons.items()}, "effects": self.effects,
                "overlap": self.overlap}
        return data, tensors

    @classmethod
    def _from_state(cls, data: dict[str, Any], tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> KnowledgeNeurons:
        classes = data["classes"]

        def per(name: str) -> dict[str, torch.Tensor]:
            return {c: tensors[f"{name}.{i}"] for i, c in enumerate(classes)}

        return cls(classes=classes, layers=data["layers"], mean_attribution=per("mean_attribution"),
                   deltas=per("deltas"), kept_share=per("kept_share"), neurons=data["neurons"], effects=data["effects"],
                   overlap=data["overlap"], info=info)
