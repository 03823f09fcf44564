"""``gradients``: one forward pass with gradients; the activations and the gradients of an objective at any site.

Weights are frozen for the run (no weight-gradient graph, no ``.grad`` left); each stack's token embeddings become
leaves of the graph, so every activation after them has a gradient path, and their own gradients are the
input-embedding gradients. Hook sites keep the tensor the model goes on to use (not a copy), so gradients there are
true derivatives; on BERT, T5, BART and Marian the bridge's attention-pattern hook receives HF's eager attention
probabilities themselves (the tensor multiplied with the values), so pattern gradients are exact there too.

Per-step objectives (one per teacher-forced target token) share one forward pass. Step t's objective depends only on
row p_t of the LM head's input X, so one backward through the head gives every step's gradient at X; the steps'
backward passes through the body then run batched (``torch.autograd.grad(..., is_grads_batched=True)``), a chunk of
steps at a time (``STEP_ROWS``). Two more things make those many backward passes cheaper (benchmarks/gradients.py):
elementwise activations backpropagate by one multiplication with their saved derivative (``linearized_activations``),
and an encoder-decoder's steps go back through the decoder to the encoder's output per chunk, then through the
encoder for many steps at once (``split_encoder``). For attribution (``embedding_step_gradients``), a long target's
steps also run in blocks on the decoder prefix they read (``prefix_blocks``), so step t's backward pass spans about
N + t positions rather than N + T.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError, SiteError
from ..inputs import Batch, token_strings
from ..provenance import provenance
from ..sites import Site
from .grad_hooks import (
    frozen_weights,
    head_input,
    input_embeddings,
    keep_hook,
    linearized_activations,
    split_encoder,
)
from .grad_scale import grad as scaled_grad
from .gradient_result import EMBED_KIND, GradientResult, embed_key
from .interventions import Intervention, RunState
from .objectives import (
    GivenRows,
    LogitFunction,
    Objective,
    ScoredRows,
    TokenScore,
    scored_stack,
    token_scores,
)
from .trace import intervention_hooks, require_fired

if TYPE_CHECKING:
    from ..model import Model

# Steps per batched backward: the largest power of two that keeps a chunk's matrix products within about STEP_ROWS rows
# (token positions of every stack, times inputs, times steps). Measured on a 2-core CPU (benchmarks/gradients.py):
# batching pays while each step's products are short (one input of 80 tokens on GPT-2-small: 8 steps at a time run
# 1.2-1.8x faster than one at a time) and stops paying once they are long (8 inputs of 80 tokens: one step at a time
# is best; more only adds memory traffic).
STEP_ROWS = 1024
STEP_MEMORY_BUDGET = 2 * 2**30  # bytes: no chunk larger than this many bytes of about sixteen head-input copies
# A long target's steps run in up to MAX_PREFIX_BLOCKS blocks of at least PREFIX_BLOCK_STEPS steps, each block's
# forward and backward passes on the decoder prefix its steps read (``prefix_blocks``): step t's backward then spans
# about N + t positions instead of N + T, for one more forward pass per block (an encoder-decoder's also runs its
# encoder again, so its blocks are longer). Measured on zoo models, 8 inputs, 2-core CPU (benchmarks/RESULTS.md,
# attribution): zoo:t5 saliency at 128 steps 1.30-1.45x faster, zoo:gpt integrated gradients at 32 steps 1.19x;
# blocks of 8 steps on zoo:t5 at 32 steps were 1.17x slower, blocks of 16 there break even.
PREFIX_BLOCK_STEPS = {"decoder": 8, "encoder-decoder": 16}
MAX_PREFIX_BLOCKS = 8


def gradients(
    model: Model,
    inputs: Any,
    objective: Objective | None = None,
    *,
    sites: str | Sequence[str] = (),
    embeddings: bool = True,
    interventions: Sequence[Intervention] = (),
    step_batch: int | None = None,
    batch_size: int | None = None,
    truncate: bool = False,
) -> GradientResult:
    """Activations and gradients of ``objective`` at ``sites`` (and the input embeddings) for ``inputs``.

    Args:
        objective: a ``TokenScore`` (default: the log-probability of each input's next token, or of the top
            prediction at an encoder's mask), ``StepScores`` (one objective per teacher-forced step) or
            ``LogitFunction``.
        sites: hook names or kinds (``"resid_post"``, ``"attn_pattern"``, ...).
        embeddings: also return the gradients at each stack's token embeddings.
        step_batch: steps per batched backward pass (default: from the input's size, see ``STEP_ROWS``; 1 runs one
            backward per step). Chunk sizes change only the rounding of the results (float32, about 1e-7 relative).
        batch_size: inputs per forward pass (default: all at once).
    """
    objective = TokenScore() if objective is None else objective
    if not isinstance(objective, Objective):
        raise InputError(f"objective must be a TokenScore, StepScores or LogitFunction, not {type(objective).__name__}.")
    names = model.site_index.resolve(sites) if (sites if isinstance(sites, str) else list(sites)) else []
    if not names and not embeddings:
        raise InputError("nothing to differentiate: pass sites= or keep embeddings=True.")
    if step_batch is not None and step_batch < 1:
        raise InputError(f"step_batch must be at least 1, not {step_batch}.")
    batch = model.encode(inputs, truncate=truncate).to(model.device)
    if model.family == "encoder-decoder" and batch.decoder_input_ids is None:
        raise InputError("an encoder-decoder's objective reads the decoder's logits: pass (source, target) pairs.")
    n = batch.input_ids.shape[0]
    step = batch_size or n
    if step < 1:
        raise InputError(f"batch_size must be at least 1, not {batch_size}.")
    parts = []
    for i in range(0, n, step):
        rows = slice(i, min(n, i + step))
        parts.append(_one_pass(model, batch.rows(rows), objective.for_rows(rows, n), names, embeddings, interventions,
                               step_batch, rows if step < n else None))
    return _assemble(model, batch, objective, names, embeddings, parts, {
        "sites": names, "embeddings": embeddings, "step_batch": step_batch, "batch_size": batch_size,
        "interventions": [type(i).__name__ for i in interventions], **objective.describe()})


def embedding_step_gradients(model: Model, batch: Batch, rows: ScoredRows, embeds: dict[str, torch.Tensor], *,
                             score: str = "logprob", step_batch: int | None = None
                             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per teacher-forced step, the score of ``rows`` (``[batch, step]``) and its gradient at each stack's token
    embeddings (``{stack: [batch, step, position, d]}``), where the stacks in ``embeds`` read those embeddings
    (``[batch, position, d]``) instead of their own: one forward pass, the steps' backward passes batched. What
    captum's methods need from a forward function that scores every step at once."""
    parts = []
    with torch.enable_grad():  # also where the caller runs without (inside a custom autograd Function's forward)
        for cols, length in prefix_blocks(model, batch, rows):
            given = {s: e[:, :length] if s == "decoder" else e for s, e in embeds.items()}
            block = rows.take(slice(None), cols)
            block = replace(block, positions=block.positions.clamp_max(length - 1))  # only padding steps lie beyond
            part = _one_pass(model, batch.decoder_prefix(length), GivenRows(block, score), [], True, (), step_batch,
                             None, given)
            parts.append((part["values"], {s: _pad_positions(part["grads"][embed_key(s)], batch.masks[s].shape[1])
                                           for s in model.stacks}))
    if len(parts) == 1:
        return parts[0]
    return torch.cat([v for v, _ in parts], 1), {s: torch.cat([g[s] for _, g in parts], 1) for s in model.stacks}


def prefix_blocks(model: Model, batch: Batch, rows: ScoredRows) -> list[tuple[slice, int]]:
    """Steps in blocks of about ``PREFIX_BLOCK_STEPS`` or more, each with the decoder length its steps read
    (``(columns, length)``): a causal decoder's step at position p depends on positions up to p only, so a block's
    forward and backward passes run on that prefix. One block (the whole length) where the model is not causal, or
    the steps are too few for the extra forward passes to pay."""
    n_steps = rows.positions.shape[1]
    full = batch.masks["decoder"].shape[1] if "decoder" in batch.masks else batch.attention_mask.shape[1]
    least = PREFIX_BLOCK_STEPS.get(model.family)
    if least is None or n_steps < 2 * least:  # an encoder's slots read the whole input
        return [(slice(0, n_steps), full)]
    size = max(least, -(-n_steps // MAX_PREFIX_BLOCKS))
    blocks = []
    for start in range(0, n_steps, size):
        cols = slice(start, min(n_steps, start + size))
        used = rows.positions[:, cols][rows.valid[:, cols]]
        blocks.append((cols, min(full, int(used.max()) + 1) if used.numel() else 1))
    return blocks


def _pad_positions(g: torch.Tensor, length: int) -> torch.Tensor:
    """``[batch, step, position, ...]`` gradients zero-padded to ``length`` positions (what follows a causal prefix
    has no effect on it)."""
    extra = length - g.shape[2]
    return g if extra == 0 else torch.cat([g, g.new_zeros((*g.shape[:2], extra, *g.shape[3:]))], 2)


def _one_pass(model: Model, batch: Batch, objective: Objective, names: list[str], embeddings: bool,
              interventions: Sequence[Intervention], step_batch: int | None, batch_rows: slice | None,
              embeds_in: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """One forward pass and its backward passes over ``batch`` (rows ``batch_rows`` of the whole input); the stacks in
    ``embeds_in`` read those token embeddings instead of their own."""
    store: dict[str, torch.Tensor] = {}
    hooks = intervention_hooks(model, interventions, RunState(masks=dict(batch.masks), rows=batch_rows))
    hooks += [(name, keep_hook(store, name)) for name in names]
    with frozen_weights(model.hf_model), torch.enable_grad(), input_embeddings(model, embeds_in) as embeds, \
            head_input(model) as head, model.hooks(hooks), linearized_activations(model, objective.per_step), \
            split_encoder(model, objective.per_step and step_batch != 1) as encoder:
        logits = model.hf_model(**batch.forward_kwargs()).logits
    require_fired(names, store)
    rows = None
    if isinstance(objective, LogitFunction):
        values = objective.values(logits, batch)[:, None]
    else:
        rows = objective.resolve(model, batch, lambda pos: logits.detach().gather(
            1, pos.to(logits.device)[..., None].expand(-1, -1, logits.shape[-1])))
        values = token_scores(logits, rows, objective.score)
    keys = names + ([embed_key(s) for s in model.stacks] if embeddings else [])
    tensors = [store[n] for n in names] + ([embeds[s] for s in model.stacks] if embeddings else [])
    for key, t in zip(keys, tensors):
        if not t.requires_grad:
            raise SiteError(f"{key} is not on the autograd path of the objective (it does not depend on the inputs).")
    chunks: list[int] = []
    if objective.per_step:
        x = head.get("x")
        if x is not None and any(_depends_on(store[n], x) for n in names if model.site_index.site(n).layer is None):
            x = None  # a site at or after the head's input (the logits): seed each step at the objective instead
        grads, chunks = _per_step(values, rows, x, tensors, keys, step_batch, batch, encoder)
    else:
        grads = [g.unsqueeze(1) for g in _grad(values.sum(), tensors, keys)]  # a step axis of one
    return {"values": values.detach(), "valid": rows.valid if rows is not None else torch.ones_like(values, dtype=torch.bool),
            "rows": rows, "grads": dict(zip(keys, grads)), "acts": {k: t.detach() for k, t in zip(keys, tensors)},
            "chunks": chunks}


def _grad(output: torch.Tensor, inputs: list[torch.Tensor], keys: list[str], **kw: Any) -> list[torch.Tensor]:
    return _require_grads(list(scaled_grad(output, inputs, allow_unused=True, **kw)), keys)


def _require_grads(grads: list[torch.Tensor | None], keys: list[str]) -> list[torch.Tensor]:
    for key, g in zip(keys, grads):
        if g is None:
            raise SiteError(f"no gradient reaches {key}: the bridge fires this hook on a copy the model does not use, "
                            "or it lies after the objective. Pick another site.")
    return grads


def _depends_on(t: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether ``t`` is computed from ``x`` (``x`` itself excluded): a walk down ``t``'s autograd graph."""
    if t is x:
        return False
    target, seen, todo = x.grad_fn, set(), [t.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        if node is target:
            return True
        seen.add(node)
        todo.extend(n for n, _ in node.next_functions)
    return False


def _per_step(values: torch.Tensor, rows: ScoredRows, x: torch.Tensor | None, inputs: list[torch.Tensor],
              keys: list[str], step_batch: int | None, batch: Batch,
              encoder: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], list[int]]:
    """``[batch, step, ...]`` gradients of every step's objective, the steps' backward passes batched; and the
    number of steps each backward pass held.

    Encoder-decoders run in two phases (``split_encoder``): each chunk of steps goes back through the decoder to the
    encoder's output only, then the encoder's backward runs for many steps at once (its products are short: the
    source's positions only). Each input's gradient is the sum of its paths through the decoder and through the
    encoder's output."""
    n_rows, n_steps = values.shape
    if x is not None and x.requires_grad and x.shape[:2] == (n_rows, batch.masks.get("decoder", batch.attention_mask).shape[1]):
        # every step's gradient at the head's input in one backward: step t lives on row p_t only
        (gx,) = torch.autograd.grad(values.sum(), x, retain_graph=True)
        source, positions = x, rows.positions.to(x.device)
    else:  # no separable head: seed each step at the objective itself
        gx, source, positions = None, values, None
    split = "leaf" in encoder
    chunk = _chunk_size(step_batch, batch, source, n_steps, stacks=("decoder",) if split else None)
    targets = inputs + [encoder["leaf"]] if split else inputs
    found: list[list[torch.Tensor | None]] = []  # per chunk, per target
    for start in range(0, n_steps, chunk):
        cols = torch.arange(start, min(n_steps, start + chunk), device=values.device)
        seed = _seeds(source, gx, positions, rows.valid.to(values.device), cols)
        found.append(_batched_grad(source, targets, seed, retain=split or start + chunk < n_steps))
    sizes = _sizes(n_steps, chunk)
    grads = [_join([f[i] for f in found], sizes, t) for i, t in enumerate(inputs)]
    at_encoder = _join([f[-1] for f in found], sizes, encoder["leaf"]) if split else None
    if at_encoder is not None:  # the paths through the encoder's output, for enc_chunk steps at a time
        enc_chunk = _chunk_size(step_batch, batch, encoder["out"], n_steps, stacks=("encoder",))
        found = [_batched_grad(encoder["out"], inputs, at_encoder[i:i + enc_chunk], retain=i + enc_chunk < n_steps)
                 for i in range(0, n_steps, enc_chunk)]
        through = [_join([f[i] for f in found], _sizes(n_steps, enc_chunk), t) for i, t in enumerate(inputs)]
        grads = [g if e is None else e if g is None else g + e for g, e in zip(grads, through)]
    return [g.movedim(0, 1) for g in _require_grads(grads, keys)], sizes


def _sizes(n_steps: int, chunk: int) -> list[int]:
    """Steps in each chunk of ``chunk`` steps."""
    return [min(chunk, n_steps - i) for i in range(0, n_steps, chunk)]


def _join(parts: list[torch.Tensor | None], sizes: list[int], like: torch.Tensor) -> torch.Tensor | None:
    """One ``[steps, *like.shape]`` tensor from per-chunk gradients (``None``: no path, zeros); ``None`` if none."""
    if all(p is None for p in parts):
        return None
    return torch.cat([like.new_zeros((k, *like.shape)) if p is None else p for p, k in zip(parts, sizes)])


def _batched_grad(output: torch.Tensor, inputs: list[torch.Tensor], seed: torch.Tensor,
                  retain: bool) -> list[torch.Tensor | None]:
    """The gradients at ``inputs`` of ``output`` for each of ``seed``'s leading rows (``None`` where none reaches)."""
    if len(seed) == 1:
        got = torch.autograd.grad(output, inputs, grad_outputs=seed[0], retain_graph=retain, allow_unused=True)
        return [None if g is None else g.unsqueeze(0) for g in got]
    return list(torch.autograd.grad(output, inputs, grad_outputs=seed, retain_graph=retain, is_grads_batched=True,
                                    allow_unused=True))


def _seeds(source: torch.Tensor, gx: torch.Tensor | None, positions: torch.Tensor | None, valid: torch.Tensor,
           cols: torch.Tensor) -> torch.Tensor:
    """``[steps, *source.shape]`` backward seeds: step t's gradient at its own row, zero elsewhere."""
    k, n_rows = len(cols), source.shape[0]
    seed = source.new_zeros((k, *source.shape))
    j = torch.arange(k, device=source.device)[:, None].expand(k, n_rows)
    r = torch.arange(n_rows, device=source.device)[None, :].expand(k, n_rows)
    keep = valid[:, cols].T.to(source.dtype)  # [k, rows]
    if gx is None:  # seeds on the objective [rows, steps]: one-hot in the step's column
        seed[j, r, cols[:, None].expand(k, n_rows)] = keep
        return seed
    p = positions[:, cols].T  # [k, rows]
    seed[j, r, p] = gx[r, p] * keep[..., None]
    return seed


def _chunk_size(step_batch: int | None, batch: Batch, source: torch.Tensor, n_steps: int,
                stacks: Sequence[str] | None = None) -> int:
    """Steps per batched backward: ``step_batch``, or about ``STEP_ROWS`` rows per chunk (see there), counting the
    token positions of ``stacks`` (default: every stack) over all inputs."""
    if step_batch is not None:
        return min(step_batch, n_steps)
    rows = sum(int(m.numel()) for s, m in batch.masks.items() if stacks is None or s in stacks)
    size = 1 << max(0, (STEP_ROWS // max(rows, 1)).bit_length() - 1)  # a power of two
    largest = STEP_MEMORY_BUDGET // max(16 * source.numel() * source.element_size(), 1)
    return max(1, min(n_steps, size, largest))


def _assemble(model: Model, batch: Batch, objective: Objective, names: list[str], embeddings: bool,
              parts: list[dict[str, Any]], params: dict[str, Any]) -> GradientResult:
    """Join the per-chunk results (padding the step axis to the longest) into one ``GradientResult``."""
    n_steps = max(p["values"].shape[1] for p in parts)

    def pad(t: torch.Tensor, value: Any = 0) -> torch.Tensor:
        extra = n_steps - t.shape[1]
        return t if extra == 0 else torch.cat([t, t.new_full((t.shape[0], extra, *t.shape[2:]), value)], 1)

    keys = list(parts[0]["grads"])
    grads = {k: torch.cat([pad(p["grads"][k]) for p in parts]).cpu() for k in keys}
    acts = {k: torch.cat([p["acts"][k] for p in parts]).cpu() for k in keys}
    values = torch.cat([pad(p["values"]) for p in parts]).cpu()
    valid = torch.cat([pad(p["valid"].to(values.device), False) for p in parts]).cpu()
    scored: dict[str, torch.Tensor] = {}
    if parts[0]["rows"] is not None:
        for field in ("positions", "tokens", "foils"):
            if getattr(parts[0]["rows"], field) is not None:
                scored[field] = torch.cat([pad(getattr(p["rows"], field).cpu(), -1) for p in parts])
    sites = {n: model.site_index.site(n) for n in names}
    sites.update({embed_key(s): Site(embed_key(s), s, None, EMBED_KIND) for s in model.stacks} if embeddings else {})
    ids = {s: t.cpu() for s, t in batch.ids.items()}
    tokens = token_strings(model.tokenizer, ids)
    step_tokens = token_strings(model.tokenizer, {"s": scored["tokens"].clamp_min(0)})["s"] if tokens and "tokens" in scored else None
    return GradientResult(step_tokens=step_tokens, grads=grads, acts=acts, sites=sites, values=values, valid=valid, scored=scored,
                          per_step=objective.per_step, scored_stack=scored_stack(model), stacks=model.stacks,
                          masks={s: m.cpu() for s, m in batch.masks.items()}, ids=ids, tokens=tokens,
                          info=provenance(model, "gradients", params, batch.input_ids.shape[0],
                                          step_chunks=[p["chunks"] for p in parts] if objective.per_step else None))
