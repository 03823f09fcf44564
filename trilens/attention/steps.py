"""``attention_steps``: attention degeneration over generation steps, by attention mass and by source sensitivity."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..capture.steps_input import StepInputs, step_inputs
from ..errors import InputError
from ..inputs import token_names
from ..provenance import provenance
from ..sources import is_source, model_inputs
from .sensitivity import source_sensitivity
from .step_metrics import cross_step_metrics, self_step_metrics, uniform_source_mass
from .steps_result import AttentionStepsResult

if TYPE_CHECKING:
    from ..model import Model


def _pad_steps(t: torch.Tensor, n_steps: int) -> torch.Tensor:
    extra = n_steps - t.shape[-1]
    return t if extra == 0 else torch.cat([t, t.new_full((*t.shape[:-1], extra), float("nan"))], -1)


def pattern_metrics(model: Model, steps: StepInputs, batch_size: int = 16) -> dict[str, torch.Tensor]:
    """``{metric: [L, B, H, T]}``: decoder self-attention metrics (plain names) and, for encoder-decoders,
    cross-attention metrics (``cross_`` names), from one traced pass per ``batch_size`` inputs."""
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, not {batch_size}.")
    kinds = ["attn_pattern"] + (["cross_attn_pattern"] if model.family == "encoder-decoder" else [])
    names = [model.site(kind, layer, "decoder") for kind in kinds for layer in range(model.n_layers["decoder"])]
    parts: list[dict[str, torch.Tensor]] = []
    decoder_only = model.family == "decoder"
    for start in range(0, len(steps.rows), batch_size):
        rows = slice(start, start + batch_size)
        cache = model.trace(steps.rows[rows], sites=names)
        valid, lengths = steps.valid[rows], steps.source_lengths[rows]
        part = self_step_metrics(cache.stack("attn_pattern", "decoder"), steps.positions[rows], valid,
                                 lengths if decoder_only else None)
        if not decoder_only:
            cross = cross_step_metrics(cache.stack("cross_attn_pattern", "decoder"), valid, lengths)
            part.update({f"cross_{k}": v for k, v in cross.items()})
        parts.append({k: v.cpu() for k, v in part.items()})
    return {k: torch.cat([_pad_steps(p[k], steps.n_steps) for p in parts], 1) for k in parts[0]}


def attention_steps(
    model: Model,
    inputs: Any,
    targets: Sequence[str] | None = None,
    *,
    max_new_tokens: int = 20,
    sensitivity: str | None = "auto",
    probes: int = 32,
    seed: int = 0,
    batch_size: int = 16,
    truncate: bool = False,
    progress: bool = False,
    split: str | None = None,
    text_column: str = "text",
    target_column: str | None = None,
    **generate_kwargs: Any,
) -> AttentionStepsResult:
    """Per layer, head and generation step: where the decoder's attention goes, and how sensitive its attention output
    and residual stream are to the source (``AttentionStepsResult``).

    Args:
        inputs: prompts (decoder-only) or sources (encoder-decoder; ``(source, target)`` pairs also work); or the
            ``StepInputs`` of an earlier run (``steps_input.step_inputs``), to measure the same steps; or a data
            source (``datasets`` object, ``save_to_disk`` folder, Parquet, JSON lines or CSV as a ``Path``) whose
            ``text_column`` (and ``target_column``) are read from ``split``.
        targets: one text per input, teacher-forced; without them the model generates greedily first
            (``max_new_tokens``, other ``generate`` arguments pass through).
        sensitivity: ``"auto"``, ``"exact"``, ``"estimate"`` (``probes`` random directions, ``seed``), or ``None``
            to skip it (see ``trilens.attention.sensitivity``).
        batch_size: inputs per traced forward pass.
    """
    if is_source(inputs):
        inputs, targets = model_inputs(inputs, model.family, split=split, text_column=text_column,
                                       target_column=target_column)
    steps = inputs if isinstance(inputs, StepInputs) else step_inputs(
        model, inputs, targets, max_new_tokens=max_new_tokens, truncate=truncate, **generate_kwargs)
    metrics = pattern_metrics(model, steps, batch_size)
    sens = None
    if sensitivity is not None:
        sens = source_sensitivity(model, steps, method=sensitivity, probes=probes, seed=seed, progress=progress)
    baseline = uniform_source_mass(steps.source_lengths, steps.valid) if model.family == "decoder" else None
    src_ids = [r[0] if isinstance(r, tuple) else r[: int(n)] for r, n in zip(steps.rows, steps.source_lengths)]
    source_tokens = [token_names(model.tokenizer, r) for r in src_ids]
    step_tokens = [token_names(model.tokenizer, [i for i in row if i >= 0]) for row in steps.step_ids.tolist()]
    params = {"targets": "generated" if steps.generated else "given", "max_new_tokens": max_new_tokens,
              "sensitivity": sensitivity, "probes": probes, "seed": seed, "batch_size": batch_size,
              "generate_kwargs": {k: v for k, v in generate_kwargs.items() if isinstance(v, (int, float, str, bool))}}
    return AttentionStepsResult(
        metrics=metrics, sensitivity=sens, baseline=baseline, valid=steps.valid, source_lengths=steps.source_lengths,
        source_tokens=source_tokens, step_tokens=step_tokens, family=model.family,
        info=provenance(model, "attention_steps", params, len(steps.rows)))
