"""The logit lens (and the machinery every residual-stream lens shares).

A lens maps the residual stream after layer l to vocabulary logits: ``Unembed(transform_hidden(h, l))``.
The logit lens's transform is the identity; the tuned lens adds a learned affine translator.
All layers and positions are computed in one batched pass per chunk of layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError
from .result import LensResult
from .unembed import Unembed

if TYPE_CHECKING:
    from ..model import Model


class Lens(torch.nn.Module):
    """Base lens: ``forward(h, layer)`` -> logits for residual states ``h`` after ``layer`` (0 = embeddings)."""

    name = "lens"

    def __init__(self, unembed: Unembed):
        super().__init__()
        self.unembed = unembed

    def transform_hidden(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        return h

    def forward(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        return self.unembed(self.transform_hidden(h, layer))


class LogitLens(Lens):
    """nostalgebraist's logit lens: the model's own final norm and unembedding on every layer."""

    name = "logit"

    @classmethod
    def from_model(cls, model: Model, stack: str | None = None) -> LogitLens:
        return cls(Unembed(model, stack))


def _targets(model: Model, cache: Any, batch_labels: torch.Tensor | None, stack: str, targets: Any) -> torch.Tensor:
    """Target id per (sequence, position); -1 where there is none."""
    ids = cache.ids[stack]
    if targets is not None:
        t = torch.as_tensor(targets, dtype=torch.long)
        if t.shape != ids.shape:
            raise InputError(f"targets must have shape {tuple(ids.shape)} (sequence, position; -1 for none), not {tuple(t.shape)}.")
        return t
    if model.family == "decoder":  # next token
        nxt = torch.full_like(ids, -1)
        nxt[:, :-1] = ids[:, 1:].masked_fill(~cache.mask(stack)[:, 1:], -1)
        return nxt
    if model.family == "encoder-decoder" and batch_labels is not None:  # teacher-forced targets
        return batch_labels.masked_fill(batch_labels < 0, -1)
    return torch.full_like(ids, -1)  # masked LM: pass targets= to score the masked tokens


@torch.no_grad()
def lens_states(model: Model, lens: Lens, states: torch.Tensor, *, k: int = 5, final: torch.Tensor | None = None,
                targets: torch.Tensor | None = None, layer_chunk: int = 4) -> dict[str, torch.Tensor]:
    """Metrics and top-k of ``lens`` on ``states`` ``[layer, batch, pos, d]``; bounded memory via layer chunks."""
    n = states.shape[0]
    final_logp = (final if final is not None else lens(states[-1], n - 1)).float().log_softmax(-1)
    p_final = final_logp.exp()
    top1_final = final_logp.argmax(-1)
    out: dict[str, list[torch.Tensor]] = {m: [] for m in ("top_ids", "top_probs", "kl", "cross_entropy", "target_rank", "entropy", "agrees")}
    for start in range(0, n, layer_chunk):
        chunk = [lens(states[layer], layer).float().log_softmax(-1) for layer in range(start, min(n, start + layer_chunk))]
        logp = torch.stack(chunk)  # [c, b, p, V]
        top = logp.topk(min(k, logp.shape[-1]), dim=-1)
        out["top_ids"].append(top.indices)
        out["top_probs"].append(top.values.exp())
        out["kl"].append((p_final * (final_logp - logp)).sum(-1))
        out["entropy"].append(-(logp.exp() * logp).sum(-1))
        out["agrees"].append(top.indices[..., 0] == top1_final)
        if targets is not None:
            tgt = targets.clamp_min(0)[None, ..., None].expand(logp.shape[0], -1, -1, 1)
            t_logp = logp.gather(-1, tgt).squeeze(-1)
            none = (targets < 0)[None].expand_as(t_logp)
            out["cross_entropy"].append((-t_logp).masked_fill(none, float("nan")))
            out["target_rank"].append((logp > t_logp[..., None]).sum(-1).masked_fill(none, -1))
        else:
            shape = logp.shape[:-1]
            out["cross_entropy"].append(torch.full(shape, float("nan")))
            out["target_rank"].append(torch.full(shape, -1, dtype=torch.long))
    return {m: torch.cat(v) for m, v in out.items()}


def run_lens(model: Model, inputs: Any, lens: Lens | None = None, *, stack: str | None = None, targets: Any = None,
             positions: Any = None, k: int = 5, truncate: bool = False) -> LensResult:
    """Apply ``lens`` (default: the logit lens) to every layer and position of ``inputs`` -> ``LensResult``."""
    stack = stack or ("decoder" if model.family != "encoder" else "encoder")
    lens = lens or LogitLens.from_model(model, stack)
    if model.family == "encoder-decoder" and not all(isinstance(x, tuple) for x in (inputs if isinstance(inputs, list) else [inputs])):
        raise InputError("the decoder stack's lens needs (source, target) pairs; for encoder layers use the decoder lens.")
    sites = model.sites(stack=stack, layer=0, kind="resid_pre") + model.sites(stack=stack, kind="resid_post")
    cache = model.trace(inputs, sites=sites, positions=positions, truncate=truncate)
    labels = model.encode(inputs, truncate=truncate).labels if model.family == "encoder-decoder" else None
    if labels is not None and positions is not None:
        raise InputError("positions= is not supported for encoder-decoder lenses yet; slice the result instead.")
    tgt = _targets(model, cache, labels, stack, targets)
    states = cache.accumulated_resid(stack)
    final = cache.logits
    with torch.no_grad():
        res = lens_states(model, lens, states, k=k, final=final if isinstance(lens, LogitLens) else None, targets=tgt)
    used = set(res["top_ids"].unique().tolist()) | set(cache.ids[stack].unique().tolist()) | set(tgt[tgt >= 0].unique().tolist())
    names = model.tokenizer.convert_ids_to_tokens(sorted(used)) if model.tokenizer else []
    vocab = {i: s if s is not None else f"<{i}>" for i, s in zip(sorted(used), names)}
    return LensResult(top_ids=res.pop("top_ids"), top_probs=res.pop("top_probs"), metrics=res, mask=cache.mask(stack),
                      input_ids=cache.ids[stack], targets=tgt, vocab=vocab,
                      info={"lens": lens.name, "model": model.name, "stack": stack, "k": k})


def logit_lens(model: Model, inputs: Any, *, stack: str | None = None, targets: Any = None, positions: Any = None,
               k: int = 5, truncate: bool = False) -> LensResult:
    """The logit lens on every layer and position of ``inputs`` (decoder stack of encoder-decoders)."""
    return run_lens(model, inputs, None, stack=stack, targets=targets, positions=positions, k=k, truncate=truncate)


def lens_at_answers(model: Model, texts: Sequence[str], answers: Sequence[str], lens: Lens | None = None) -> dict[str, torch.Tensor]:
    """``lens`` (default: logit lens) at each text's answer slot, scored against its answer token.

    The slot is the last token for a decoder-only model (it predicts the answer) and the ``[MASK]``
    for an encoder; returns ``LensResult.at`` there: metrics ``[layer, text]``, top-1, settled layer.
    """
    if model.family == "encoder-decoder":
        raise InputError("answer slots are for decoder-only and encoder models; use the decoder lens for encoder-decoders.")
    if len(answers) != len(texts):
        raise InputError(f"{len(answers)} answers for {len(texts)} texts: give one answer token per text.")
    tok = model.tokenizer
    batch = model.encode(list(texts))
    if model.family == "decoder":
        pos = batch.attention_mask.sum(1) - 1  # right padding: the last real token
    else:
        is_mask = batch.input_ids == tok.mask_token_id
        if not bool(is_mask.any(1).all()):
            raise InputError(f"text {int((~is_mask.any(1)).nonzero()[0])} has no {tok.mask_token}: mark the answer's slot.")
        pos = is_mask.int().argmax(1)
    targets = torch.full_like(batch.input_ids, -1)
    targets[torch.arange(len(texts)), pos] = torch.tensor(tok.convert_tokens_to_ids(list(answers)))
    return run_lens(model, list(texts), lens, targets=targets).at(pos)


__all__: Sequence[str] = ["Lens", "LogitLens", "logit_lens", "run_lens", "lens_states", "lens_at_answers"]
