"""Compute for the "Attribution" panel: captum attributions of the current input's generation (or target) to its
tokens, with the panel's method and settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..attribution import AttributionResult, attribute
from ..attribution.methods import method_spec
from ..errors import InputError
from .inputs import GENERATED_TARGET_TOKENS, Prepared

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
    the text has none)."""
    if not model.has_trained_head:
        raise InputError(f"{model.name} has no trained LM head, so there is no predicted token to attribute; pick a "
                         "model with its language-modelling head (zoo:gpt, zoo:bert, zoo:t5).")
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
        mask = getattr(model.tokenizer, "mask_token", None)
        at = None if mask and mask in prep.model_input else 0
        return attribute(model, [prep.model_input], position=at, **kwargs)
    if model.family == "encoder-decoder":
        return attribute(model, [prep.model_input], **kwargs)
    new = APP_STEPS
    if model.max_length is not None:
        new = min(new, model.max_length - prep.n_tokens["decoder"])
        if new < 1:
            raise InputError(f"the text fills this model's context of {model.max_length} tokens: there is no room to "
                             "generate. Shorten it.")
    return attribute(model, [prep.model_input], max_new_tokens=min(new, GENERATED_TARGET_TOKENS), **kwargs)
