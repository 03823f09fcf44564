"""What each layer believes, for one input: the logit (or a saved tuned) lens as layer x position arrays with the
top-5 tokens per cell, and the difference between two inputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError
from ..lens import TunedLens, run_lens
from .inputs import Prepared

if TYPE_CHECKING:
    from ..model import Model

# statistic shown in the heatmap -> (the LensResult metric it reads, its unit)
LENS_STATISTICS = {
    "top-1 probability": ("top_prob", "probability"),
    "entropy": ("entropy", "nats"),
    "KL to final": ("kl", "nats"),
    "target rank": ("target_rank", "rank (0 = top)"),
}
TOP_K = 5


@dataclass
class LensView:
    """One input's lens: ``values[statistic]`` is ``[layer, position]`` float32 (NaN where undefined), ``top_tokens``
    and ``top_probs`` are ``[layer][position][k]``, ``targets`` the token each position is scored against ("")."""

    lens: str
    stack: str
    tokens: list[str]
    targets: list[str]
    values: dict[str, np.ndarray]
    top_tokens: list[list[list[str]]]
    top_probs: np.ndarray

    @property
    def n_layers(self) -> int:
        return self.top_probs.shape[0]

    @property
    def statistics(self) -> list[str]:
        return list(self.values)

    def cell_text(self) -> list[list[str]]:
        """The top-1 token in each cell."""
        return [[row[0] for row in layer] for layer in self.top_tokens]

    def hover_text(self) -> list[list[str]]:
        """The top-5 tokens with their probabilities in each cell."""
        return [["<br>".join(f"{tok} {p:.3f}" for tok, p in zip(cell, probs)) for cell, probs in zip(layer, layer_p)]
                for layer, layer_p in zip(self.top_tokens, self.top_probs)]

    def target_rank(self, position: int) -> np.ndarray:
        """``[layer]``: the rank of ``position``'s target token at every layer (NaN if it has none)."""
        if not 0 <= position < len(self.tokens):
            raise InputError(f"position {position} does not exist; this input has {len(self.tokens)} tokens.")
        if "target rank" not in self.values:
            return np.full(self.n_layers, np.nan, dtype=np.float32)
        return self.values["target rank"][:, position]


def load_tuned(model: Model, path: str) -> TunedLens:
    """A tuned lens saved for ``model`` (``TunedLens.save``), with a message naming the folder when it is not one."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder; give the folder a tuned lens was saved to (TunedLens.save).")
    return TunedLens.load(folder, model)


def lens_view(model: Model, prepared: Prepared, tuned: TunedLens | None = None) -> LensView:
    """The logit lens (or ``tuned``) on every layer and position of one input."""
    if model.family == "encoder" and not model.has_trained_head:
        raise InputError(f"{model.name} has no trained masked-LM head, so its layers cannot be read as words; "
                         "pick a model with a trained head (zoo:bert) for the lens.")
    res = run_lens(model, prepared.model_input, tuned, k=TOP_K)
    n = int(res.mask[0].sum())
    values = {"top-1 probability": res.top_probs[:, 0, :n, 0].float().numpy()}
    for name, (metric, _) in LENS_STATISTICS.items():
        if metric in res.metrics and (metric != "target_rank" or bool((res.targets[0, :n] >= 0).any())):
            v = res.metrics[metric][:, 0, :n].float().numpy()
            if metric == "target_rank":
                v = np.where(v < 0, np.nan, v)
            values[name] = v.astype(np.float32)
    top = [[[res.token(i) for i in res.top_ids[layer, 0, pos].tolist()] for pos in range(n)] for layer in range(res.n_layers)]
    targets = [res.token(t) if t >= 0 else "" for t in res.targets[0, :n].tolist()]
    return LensView(res.info.get("lens", "logit"), res.info.get("stack", ""), [res.token(i) for i in res.input_ids[0, :n].tolist()],
                    targets, values, top, res.top_probs[:, 0, :n].float().numpy().astype(np.float32))


def lens_difference(a: LensView, b: LensView, statistic: str) -> tuple[np.ndarray, int]:
    """``a`` minus ``b`` for ``statistic`` at every layer, over the positions both inputs have."""
    for view in (a, b):
        if statistic not in view.values:
            raise InputError(f"{statistic} is not available for both inputs (pick one of {', '.join(a.values)}).")
    if a.n_layers != b.n_layers:
        raise InputError("the two lenses have different numbers of layers; compare inputs of one model with one lens.")
    n = min(len(a.tokens), len(b.tokens))
    return a.values[statistic][:, :n] - b.values[statistic][:, :n], n
