"""Compute for the "Attribution" panel: captum attributions of the current input's generation (or target) to its
tokens, with the panel's method and settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..attribution import AttributionResult, attribute
from ..attribution.methods import method_spec
from .inputs import Prepared, new_tokens, read_position

if TYPE_CHECKING:
    from ..model import Model

FAST_METHODS = ("saliency", "input_x_gradient")  # one forward and the batched backward passes: computed at once
APP_STEPS = 16  # decoder-only continuation length in the panel (attribution costs grow with the steps)


@dataclass(frozen=True)
class AttributionSettings:
    method: str = "saliency"
    n_steps: int = 32
    baseline: str = ""  # "" = the method's default
    contrast: str = ""  # an aligned contrast text (encoder-only: the foil token)

    @property
    def fast(self) -> bool:
        return self.method in FAST_METHODS


def attribution_view(model: Model, prep: Prepared, settings: AttributionSettings) -> AttributionResult:
    """``attribute`` on the current input: decoder-only models continue the text (``APP_STEPS`` tokens, within the
    context); encoder-decoders attribute the given or generated target; encoders their masks (the first token where
    the text has none). ``attribute`` itself refuses a model without a trained head."""
    spec = method_spec(settings.method)
    kwargs: dict[str, Any] = {"method": spec.name, "step_scores": ("probability", "entropy")}
    if spec.steps:
        kwargs["n_steps"] = settings.n_steps
    if settings.baseline:
        kwargs["baseline"] = settings.baseline
    elif spec.baseline == "required":
        kwargs["baseline"] = "zeros"
    if settings.contrast.strip():
        kwargs["contrast"] = settings.contrast.strip()
        kwargs["step_scores"] += ("contrast_prob_diff",)
    if model.family == "encoder":
        return attribute(model, [prep.model_input], position=read_position(model, prep), **kwargs)
    return attribute(model, [prep.model_input], max_new_tokens=new_tokens(model, prep, APP_STEPS), **kwargs)
