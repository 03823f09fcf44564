"""The decoder lens (Langedijk et al. 2023): let the decoder read encoder layer k instead of the last.

h_k = final_encoder_norm(H[k]) for k < L (identity where the model has none), h_L = the model's own
encoder output; then generate or teacher-force with encoder_outputs = h_k. All k = 0..L run as one
batch: the L + 1 memories are stacked along the batch dimension.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError, TrilensError
from ..provenance import provenance
from .decoder_result import DecoderLensResult
from .metrics import chrf, exact_match
from .unembed import encoder_final_norm

if TYPE_CHECKING:
    from ..model import Model


@torch.no_grad()
def encoder_memories(model: Model, sources: Sequence[Any], *, truncate: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``([L + 1, batch, src, d] memories, [batch, src] mask)``: what the decoder reads for each encoder layer k."""
    sites = model.sites(stack="encoder", layer=0, kind="resid_pre") + model.sites(stack="encoder", kind="resid_post")
    cache = model.trace(list(sources), sites=sites, truncate=truncate)
    states = cache.accumulated_resid("encoder")
    norm = encoder_final_norm(model)
    mem = norm(states) if norm is not None else states
    return mem, cache.mask("encoder")


def _check(model: Model, sources: Any, references: Any) -> list[Any]:
    if model.family != "encoder-decoder":
        raise TrilensError(f"the decoder lens needs an encoder-decoder model; this one is {model.family}. "
                           "Use trilens.lens.logit_lens for its layers instead.")
    sources = [sources] if isinstance(sources, str) else list(sources)
    if not sources:
        raise InputError("the decoder lens needs at least one source.")
    if references is not None and len(references) != len(sources):
        raise InputError(f"{len(references)} references for {len(sources)} sources: pass one reference per source.")
    return sources


def decoder_lens(
    model: Model,
    sources: Any,
    *,
    references: Sequence[str] | None = None,
    mode: str = "generate",
    max_new_tokens: int = 32,
    batch_size: int = 16,
    truncate: bool = False,
    **generate_kwargs: Any,
) -> DecoderLensResult:
    """Run the decoder on every encoder layer's output, for every source.

    Args:
        references: expected outputs: exact match and chrF per layer (generate mode), and the
            target log-probability and token accuracy per layer (teacher mode, where they are required).
        mode: ``"generate"`` (greedy unless generate kwargs say otherwise) or ``"teacher"``.
        batch_size: sources per batched run (each run holds (L + 1) x batch_size sequences).
    """
    sources = _check(model, sources, references)
    if mode not in ("generate", "teacher"):
        raise InputError(f"mode must be 'generate' or 'teacher', not {mode!r}.")
    if mode == "teacher" and references is None:
        raise InputError("teacher mode needs references to teacher-force.")
    from transformers.modeling_outputs import BaseModelOutput

    n_layers = model.n_layers["encoder"] + 1
    outputs: list[list[str]] = [[] for _ in range(n_layers)]
    logprob: list[list[float]] = [[] for _ in range(n_layers)]
    token_acc: list[list[float]] = [[] for _ in range(n_layers)]
    for start in range(0, len(sources), batch_size):
        chunk = sources[start:start + batch_size]
        mem, mask = encoder_memories(model, chunk, truncate=truncate)
        b = len(chunk)
        flat_mem = mem.reshape(n_layers * b, *mem.shape[2:])
        flat_mask = mask.long().repeat(n_layers, 1).to(flat_mem.device)
        enc = BaseModelOutput(last_hidden_state=flat_mem)
        with torch.no_grad():
            if mode == "generate":
                kw = {"max_new_tokens": max_new_tokens, "do_sample": False, **generate_kwargs}
                seq = model.hf_model.generate(encoder_outputs=enc, attention_mask=flat_mask, **kw)
                texts = model.tokenizer.batch_decode(seq, skip_special_tokens=True)
                for k in range(n_layers):
                    outputs[k].extend(texts[k * b:(k + 1) * b])
            else:
                batch = model.encode(list(zip(chunk, references[start:start + b])), truncate=truncate)
                dec = batch.decoder_input_ids.repeat(n_layers, 1).to(flat_mem.device)
                labels = batch.labels.repeat(n_layers, 1).to(flat_mem.device)
                logits = model.hf_model(encoder_outputs=enc, attention_mask=flat_mask, decoder_input_ids=dec,
                                        decoder_attention_mask=batch.decoder_attention_mask.repeat(n_layers, 1)).logits
                logp = logits.float().log_softmax(-1)
                valid = labels >= 0
                tok_logp = logp.gather(-1, labels.clamp_min(0)[..., None]).squeeze(-1).masked_fill(~valid, 0)
                hits = ((logp.argmax(-1) == labels) & valid).sum(1) / valid.sum(1)
                pred = logp.argmax(-1).masked_fill(~valid, model.pad_token_id)
                texts = model.tokenizer.batch_decode(pred, skip_special_tokens=True)
                for k in range(n_layers):
                    rows = slice(k * b, (k + 1) * b)
                    outputs[k].extend(texts[rows])
                    logprob[k].extend(tok_logp[rows].sum(1).tolist())
                    token_acc[k].extend(hits[rows].tolist())
    per_layer: dict[str, list[list[float]]] = {}
    if references is not None:
        per_layer["exact_match"] = [[float(exact_match(o, r)) for o, r in zip(outs, references)] for outs in outputs]
        per_layer["chrf"] = [[chrf(o, r) for o, r in zip(outs, references)] for outs in outputs]
    if mode == "teacher":
        per_layer["target_logprob"] = logprob
        per_layer["token_accuracy"] = token_acc
    return DecoderLensResult(sources=[s if isinstance(s, str) else str(s) for s in sources], references=references,
                             outputs=outputs, scores=per_layer,
                             info=provenance(model, "decoder lens", {"mode": mode, "max_new_tokens": max_new_tokens},
                                             len(sources), mode=mode, n_encoder_layers=n_layers - 1,
                                             max_new_tokens=max_new_tokens))
