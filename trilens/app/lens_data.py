"""What each layer believes, for one input: the logit (or a saved tuned) lens's own ``LensResult`` (top 5 per cell),
the statistics it can show, and the difference between two inputs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError
from ..lens import LensResult, TunedLens, run_lens
from .inputs import Prepared

if TYPE_CHECKING:
    from ..model import Model

# statistic shown in the heatmap -> the LensResult metric it reads (None: the top-1 probability; see LensResult.figure)
LENS_STATISTICS = {"top-1 probability": None, "entropy": "entropy", "KL to final": "kl", "target rank": "target_rank"}
TOP_K = 5


def statistics(res: LensResult) -> list[str]:
    """The statistics ``res`` can show for its one input (the target rank only where a position has a target)."""
    has_target = any(res.target_tokens())
    return [name for name, metric in LENS_STATISTICS.items()
            if metric is None or metric in res.metrics and (metric != "target_rank" or has_target)]


def load_tuned(model: Model, path: str) -> TunedLens:
    """A tuned lens saved for ``model`` (``TunedLens.save``), with a message naming the folder when it is not one."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder; give the folder a tuned lens was saved to (TunedLens.save).")
    return TunedLens.load(folder, model)


def lens_result(model: Model, prepared: Prepared, tuned: TunedLens | None = None) -> LensResult:
    """The logit lens (or ``tuned``) on every layer and position of one input, top 5 per cell."""
    if model.family == "encoder" and not model.has_trained_head:
        raise InputError(f"{model.name} has no trained masked-LM head, so its layers cannot be read as words; "
                         "pick a model with a trained head (zoo:bert) for the lens.")
    return run_lens(model, prepared.model_input, tuned, k=TOP_K)


def lens_difference(a: LensResult, b: LensResult, statistic: str) -> tuple[np.ndarray, int]:
    """``a`` minus ``b`` for ``statistic`` at every layer, over the positions both inputs have."""
    for res in (a, b):
        if statistic not in statistics(res):
            raise InputError(f"{statistic} is not available for both inputs (pick one of {', '.join(statistics(a))}).")
    if a.n_layers != b.n_layers:
        raise InputError("the two lenses have different numbers of layers; compare inputs of one model with one lens.")
    va, vb = (res.values(LENS_STATISTICS[statistic]).numpy() for res in (a, b))
    n = min(va.shape[1], vb.shape[1])
    return va[:, :n] - vb[:, :n], n
