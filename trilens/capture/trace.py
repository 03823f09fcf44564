"""``trace``: one forward pass that captures only the sites asked for; ``run``: a plain forward.

Runs use ``torch.no_grad()`` rather than ``inference_mode()``: inference tensors cannot meet the
model's (grad-requiring) weights later, and users project captured activations through them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..devices import as_device, as_dtype
from ..errors import InputError, SiteError
from ..inputs import Batch, token_strings
from ..provenance import provenance
from ..sites import PATTERN_KINDS
from .cache import ActivationCache
from .interventions import Intervention, RunState
from .positions import gather_positions, position_index

if TYPE_CHECKING:
    from ..model import Model


def capture_hook(
    store: dict[str, Any], name: str, axis: int, index: torch.Tensor | None,
    dtype: torch.dtype | None, device: torch.device | None, append: bool = False,
) -> Callable:
    """A hook that keeps a detached (position-selected, cast, moved) copy of the activation."""

    def hook(x: torch.Tensor, hook: Any = None) -> None:
        y = x.detach()
        if index is not None:
            y = gather_positions(y, index, axis)
        if dtype is not None or device is not None:
            y = y.to(device=device or y.device, dtype=dtype or y.dtype)
        if append:
            store.setdefault(name, []).append(y)
        else:
            store[name] = y

    return hook


def require_fired(names: Sequence[str], store: dict[str, Any]) -> None:
    """Every requested site fired in the run that just ended, or a ``SiteError`` naming the first that did not."""
    unfired = [name for name in names if name not in store]
    if unfired:
        raise SiteError(f"site {unfired[0]} did not fire in this run: it lies outside the part of the model this "
                        "input runs (e.g. the LM head when only the encoder runs).")


def intervention_hooks(model: Model, interventions: Sequence[Intervention], state: RunState) -> list[tuple[str, Callable]]:
    hooks: list[tuple[str, Callable]] = []
    for iv in interventions:
        if not isinstance(iv, Intervention):
            raise InputError(f"interventions must be trilens Intervention objects (Patch, Steer, AblateHeads...), not {type(iv).__name__}.")
        hooks.extend(iv.hooks(model, state))
    return hooks


def _needs_target(model: Model, names: Sequence[str]) -> list[str]:
    return [n for n in names if model.site_index.site(n).stack == "decoder"] if model.family == "encoder-decoder" else []


def forward(model: Model, batch: Batch, *, head: bool = True) -> Any:
    """The HF forward for a batch; encoder-decoders without targets run only the encoder.

    ``head=False`` skips the LM head where the model has a separate base model (decoder-only and
    encoder-only): block hooks fire the same, and a 50k-word unembedding is most of a small model's cost.
    """
    hf = model.hf_model
    if model.family == "encoder-decoder" and batch.decoder_input_ids is None:
        return hf.get_encoder()(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    if not head and model.family != "encoder-decoder" and hf.base_model is not hf:
        return hf.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    return hf(**batch.forward_kwargs())


def trace(
    model: Model,
    inputs: Any,
    sites: str | Sequence[str],
    *,
    positions: Any = None,
    dtype: Any = None,
    device: Any = None,
    interventions: Sequence[Intervention] = (),
    truncate: bool = False,
    batch_size: int | None = None,
    logits: bool = True,
    tokens: bool = True,
) -> ActivationCache:
    """Capture ``sites`` for ``inputs`` in one forward pass (or ``batch_size`` rows at a time).

    ``logits=False`` skips the LM head when every site is inside a block; ``tokens=False`` skips
    building token strings (both for bulk capture).
    """
    names = model.site_index.resolve(sites)
    out_dtype, out_device = as_dtype(dtype), as_device(device) or model.result_device
    batch = model.encode(inputs, truncate=truncate).to(model.device)
    missing = _needs_target(model, names) if batch.decoder_input_ids is None else []
    if missing:
        raise InputError(
            f"decoder site {missing[0]} needs a target: pass (source, target) pairs to teacher-force the decoder."
        )
    per_stack = positions if isinstance(positions, dict) else {s: positions for s in batch.masks}
    index = {s: position_index(per_stack.get(s), m.cpu()) for s, m in batch.masks.items()}
    n = batch.input_ids.shape[0]
    step = batch_size or n
    if step < 1:
        raise InputError(f"batch_size must be at least 1, not {batch_size}.")
    chunks: list[dict[str, torch.Tensor]] = []
    chunk_logits = []
    for start in range(0, n, step):
        rows = slice(start, min(n, start + step))
        sub = batch.rows(rows)
        store: dict[str, torch.Tensor] = {}
        state = RunState(masks={s: m[rows] for s, m in batch.masks.items()}, rows=rows if step < n else None)
        hooks = intervention_hooks(model, interventions, state)
        for name in names:
            site = model.site_index.site(name)
            idx = index.get(site.stack)
            hooks.append((name, capture_hook(store, name, 2 if site.kind in PATTERN_KINDS else 1,
                                             None if idx is None else idx[rows], out_dtype, out_device)))
        with torch.no_grad(), model.hooks(hooks):
            head = logits or any(model.site_index.site(n).layer is None for n in names)
            out = forward(model, sub, head=head)
        require_fired(names, store)
        chunks.append(store)
        if logits and getattr(out, "logits", None) is not None:
            lg = out.logits
            idx = index.get("decoder" if model.family != "encoder" else "encoder")
            chunk_logits.append((lg if idx is None else gather_positions(lg, idx[rows], 1)).to(out_device or lg.device))
    acts = {name: torch.cat([c[name] for c in chunks]) if len(chunks) > 1 else chunks[0][name] for name in names if name in chunks[0]}
    all_logits = None if not chunk_logits else chunk_logits[0] if len(chunk_logits) == 1 else torch.cat(chunk_logits)
    masks, ids = {}, {}
    for s, m in batch.masks.items():
        masks[s] = m.cpu() if index[s] is None else gather_positions(m.cpu(), index[s], 1)
        ids[s] = batch.ids[s].cpu() if index[s] is None else gather_positions(batch.ids[s].cpu(), index[s], 1)
    strings = token_strings(model.tokenizer, ids) if tokens else {}
    return ActivationCache(
        acts, {n: model.site_index.site(n) for n in names}, stacks=model.stacks, masks=masks, tokens=strings, ids=ids,
        positions={s: i for s, i in index.items() if i is not None},
        logits=all_logits,
        info=provenance(model, "trace", {"sites": names, "positions": positions, "batch_size": batch_size,
                                         "interventions": [type(i).__name__ for i in interventions]}, n,
                        positions=positions, interventions=[type(i).__name__ for i in interventions]),
    )


def run(model: Model, inputs: Any, *, interventions: Sequence[Intervention] = (), truncate: bool = False) -> torch.Tensor:
    """A plain forward with optional interventions -> logits."""
    batch = model.encode(inputs, truncate=truncate).to(model.device)
    if model.family == "encoder-decoder" and batch.decoder_input_ids is None:
        raise InputError("an encoder-decoder run needs targets for its logits: pass (source, target) pairs.")
    with torch.no_grad(), model.hooks(intervention_hooks(model, interventions, RunState(masks=dict(batch.masks)))):
        return model.hf_model(**batch.forward_kwargs()).logits
