"""The logit lens (and the machinery every residual-stream lens shares).

A lens maps the residual stream after layer l to vocabulary logits: ``Unembed(transform_hidden(h, l))``.
The logit lens's transform is the identity; the tuned lens adds a learned affine translator.
Every layer's unembedding runs on blocks of positions, and the vocabulary-wide metrics on cache-sized
blocks of those logits (``lens_states``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError
from ..inputs import token_names
from ..provenance import provenance
from .divergence import row_dot
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
def lens_states(lens: Lens, states: torch.Tensor, *, k: int = 5, final: torch.Tensor | None = None,
                targets: torch.Tensor | None = None, rows: int = 256, block: int = 64) -> dict[str, torch.Tensor]:
    """Metrics and top-k of ``lens`` on ``states`` ``[layer, batch, pos, d]``, in bounded memory.

    Each layer's unembedding runs on ``rows`` positions at a time (an efficient product); the
    vocabulary-wide metrics then run on cache-sized ``block``s of those logits, with row dot products
    instead of ``[rows, vocab]`` temporaries. The target's rank and the top-k are read from the raw
    logits, where normalising cannot create ties.
    """
    n, batch, pos, _ = states.shape
    h = states.reshape(n, batch * pos, -1)
    m = batch * pos
    final_logp = (final if final is not None else lens(states[-1], n - 1)).float().reshape(m, -1).log_softmax(-1)
    p_final = final_logp.exp()
    neg_entropy_final = row_dot(p_final, final_logp)
    top1_final = final_logp.argmax(-1)
    k = min(k, final_logp.shape[-1])
    out = {"top_ids": torch.empty(n, m, k, dtype=torch.long), "top_probs": torch.empty(n, m, k), "kl": torch.empty(n, m),
           "entropy": torch.empty(n, m), "cross_entropy": torch.full((n, m), float("nan")),
           "target_rank": torch.full((n, m), -1, dtype=torch.long)}
    flat_targets = targets.reshape(m) if targets is not None else None
    for layer in range(n):
        for start in range(0, m, rows):
            logits = lens(h[layer, start:start + rows], layer).float()
            for s in range(0, logits.shape[0], block):
                x = logits[s:s + block]
                r = slice(start + s, start + s + x.shape[0])
                lse = torch.logsumexp(x, -1, keepdim=True)
                top = x.topk(k, dim=-1)
                out["top_ids"][layer, r] = top.indices
                out["top_probs"][layer, r] = (top.values - lse).exp()
                logp = x - lse
                out["entropy"][layer, r] = -row_dot(logp.exp(), logp)
                out["kl"][layer, r] = neg_entropy_final[r] - row_dot(p_final[r], logp)
                if flat_targets is not None:
                    tgt = flat_targets[r]
                    scored = tgt >= 0
                    t_logit = x.gather(-1, tgt.clamp_min(0)[:, None])
                    ce = (lse - t_logit)[:, 0]
                    rank = (x > t_logit).sum(-1)
                    out["cross_entropy"][layer, r] = ce.masked_fill(~scored, float("nan"))
                    out["target_rank"][layer, r] = rank.masked_fill(~scored, -1)
    out["agrees"] = out["top_ids"][..., 0] == top1_final
    return {name: v.reshape(n, batch, pos, *v.shape[2:]) for name, v in out.items()}


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
        res = lens_states(lens, states, k=k, final=final if isinstance(lens, LogitLens) else None, targets=tgt)
    used = set(res["top_ids"].unique().tolist()) | set(cache.ids[stack].unique().tolist()) | set(tgt[tgt >= 0].unique().tolist())
    vocab = dict(zip(sorted(used), token_names(model.tokenizer, sorted(used)))) if model.tokenizer else {}
    return LensResult(top_ids=res.pop("top_ids"), top_probs=res.pop("top_probs"), metrics=res, mask=cache.mask(stack),
                      input_ids=cache.ids[stack], targets=tgt, vocab=vocab,
                      info=provenance(model, f"{lens.name} lens", {"stack": stack, "k": k, "positions": positions},
                                      cache.mask(stack).shape[0], lens=lens.name, stack=stack, k=k))


def logit_lens(model: Model, inputs: Any, *, stack: str | None = None, targets: Any = None, positions: Any = None,
               k: int = 5, truncate: bool = False) -> LensResult:
    """The logit lens on every layer and position of ``inputs`` (decoder stack of encoder-decoders)."""
    return run_lens(model, inputs, None, stack=stack, targets=targets, positions=positions, k=k, truncate=truncate)


def lens_at_answers(model: Model, texts: Sequence[str], answers: Sequence[str], lens: Lens | None = None) -> dict[str, torch.Tensor]:
    """``lens`` (default: logit lens) at each text's answer slot, scored against its answer token.

    The slot is the last token for a decoder-only model (it predicts the answer) and the ``[MASK]``
    for an encoder; returns ``LensResult.at`` there: metrics ``[layer, text]``, top-1, settled layer.
    """
    targets, pos = answer_slots(model, texts, answers)
    return run_lens(model, list(texts), lens, targets=targets).at(pos)


def answer_slots(model: Model, texts: Sequence[str], answers: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(``targets [text, position]``: each answer's id at its text's slot, -1 elsewhere; the slot of each text): the
    last token of a decoder-only model's text, an encoder's ``[MASK]``."""
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
    return targets, pos


__all__: Sequence[str] = ["Lens", "LogitLens", "logit_lens", "run_lens", "lens_states", "lens_at_answers",
                          "answer_slots"]
