"""``generate``: HF generation with every step's activations captured (and interventions applied)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..devices import as_device, as_dtype
from ..errors import InputError
from ..provenance import provenance
from .generation import Generation
from .interventions import Intervention, RunState
from .trace import intervention_hooks

if TYPE_CHECKING:
    from ..model import Model


def _check(model: Model, names: Sequence[str], kwargs: dict[str, Any]) -> None:
    if model.family == "encoder":
        raise InputError("encoder-only models do not generate; use model.trace (or model.run) instead.")
    if names and (kwargs.get("num_beams", 1) > 1 or kwargs.get("num_return_sequences", 1) > 1):
        raise InputError("capture during generation needs one sequence per input: beam search and "
                         "num_return_sequences > 1 reorder the batch between steps. Capture with num_beams=1.")


def generate(
    model: Model,
    inputs: Any,
    *,
    capture: str | Sequence[str] | None = None,
    max_new_tokens: int = 20,
    interventions: Sequence[Intervention] = (),
    dtype: Any = None,
    device: Any = None,
    truncate: bool = False,
    **generate_kwargs: Any,
) -> Generation:
    """Generate up to ``max_new_tokens`` per input, capturing ``capture`` sites at every step.

    Decoder-only prompts are left-padded; encoder-decoder inputs are sources (the encoder runs
    once, its sites are captured once). Greedy unless ``do_sample=True`` is passed; other HF
    ``generate`` arguments pass through. Intervention ``positions`` are absolute positions in the
    (left-padded) sequence, so a hook can act on generated positions too.
    """
    names = model.site_index.resolve(capture) if capture else []
    _check(model, names, generate_kwargs)
    out_dtype, out_device = as_dtype(dtype), as_device(device) or model.result_device
    decoder_only = model.family == "decoder"
    batch = model.encode(inputs, truncate=truncate, padding_side="left" if decoder_only else "right").to(model.device)
    if batch.decoder_input_ids is not None:
        raise InputError("generate takes sources only; (source, target) pairs are for model.trace.")

    state = RunState(offsets={"decoder": 0})
    steps: list[dict[str, torch.Tensor]] = []
    once: dict[str, torch.Tensor] = {}  # encoder sites of an encoder-decoder: one pass

    fed = [0]  # decoder positions processed by earlier forwards

    def new_step(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids" if decoder_only else "decoder_input_ids")
        pos = kwargs.get("cache_position")
        state.offsets["decoder"] = int(pos[0]) if pos is not None and len(pos) else fed[0]
        fed[0] = state.offsets["decoder"] + (ids.shape[1] if ids is not None else 1)
        steps.append({})

    def capture_hook(name: str, per_step: bool):
        def hook(x: torch.Tensor, hook: Any = None) -> None:
            y = x.detach()
            if out_dtype is not None or out_device is not None:
                y = y.to(device=out_device or y.device, dtype=out_dtype or y.dtype)
            (steps[-1] if per_step else once)[name] = y

        return hook

    hooks = intervention_hooks(model, interventions, state)
    for name in names:
        per_step = decoder_only or model.site_index.site(name).stack == "decoder"
        hooks.append((name, capture_hook(name, per_step)))
    kw = {"max_new_tokens": max_new_tokens, "do_sample": False, "pad_token_id": model.pad_token_id, **generate_kwargs}
    handle = model.hf_model.register_forward_pre_hook(new_step, with_kwargs=True)
    try:
        with torch.no_grad(), model.hooks(hooks):
            out = model.hf_model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                          return_dict_in_generate=True, output_logits=True, **kw)
    finally:
        handle.remove()
    kwargs = {k: v for k, v in generate_kwargs.items() if isinstance(v, (int, float, str, bool))}
    interventions_used = [type(i).__name__ for i in interventions]
    return Generation.from_run(model, batch, out, steps, once, names, info=provenance(
        model, "generate", {"sites": names, "max_new_tokens": max_new_tokens, "generate_kwargs": kwargs,
                            "interventions": interventions_used}, batch.input_ids.shape[0],
        sites=names, max_new_tokens=max_new_tokens, generate_kwargs=kwargs, interventions=interventions_used))
