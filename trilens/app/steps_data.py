"""Compute for the "Attention over steps" panel: per-step attention metrics and source sensitivity of the current
input's generation (or target), and its relevancy, rollout and flow maps — the same steps for both."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..attention import (
    AttentionStepsResult,
    RelevancyResult,
    attention_steps,
    relevancy_maps,
)
from ..attention.flow import MAX_FLOW_TOKENS
from ..capture.steps_input import step_inputs
from .inputs import GENERATED_TARGET_TOKENS, Prepared, new_tokens, read_position

if TYPE_CHECKING:
    from ..model import Model

SENSITIVITY_PROBES = 32  # random directions: an estimate in a fraction of a second (exact takes seconds per input)


@dataclass
class StepsView:
    steps: AttentionStepsResult | None  # None for encoder-only models (no generation steps)
    maps: RelevancyResult


def steps_view(model: Model, prep: Prepared) -> StepsView:
    """Per-step metrics (decoder-only: the model continues the text; encoder-decoder: the given or generated target)
    and the maps of the same steps; an encoder's maps are read at its mask."""
    if model.family == "encoder":
        return StepsView(None, relevancy_maps(model, [prep.model_input], methods=_methods(model, prep),
                                              position=read_position(model, prep)))
    inputs: Any = [prep.model_input]
    new = new_tokens(model, prep, GENERATED_TARGET_TOKENS)
    steps = step_inputs(model, inputs, max_new_tokens=new)
    result = attention_steps(model, steps, sensitivity="estimate", probes=SENSITIVITY_PROBES)
    return StepsView(result, relevancy_maps(model, steps, methods=_methods(model, prep, len(steps.rows[0]))))


def _methods(model: Model, prep: Prepared, length: int | None = None) -> tuple[str, ...]:
    """Relevancy (where a trained head gives a score to differentiate), rollout, and flow where it applies (one
    stack, within its token cap)."""
    n = length if length is not None else max(prep.n_tokens.values())
    flow = model.family != "encoder-decoder" and n <= MAX_FLOW_TOKENS
    return (("relevancy",) if model.has_trained_head else ()) + ("rollout",) + (("flow",) if flow else ())
