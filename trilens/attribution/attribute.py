"""``attribute``: which input tokens made the model produce each token of a generation (or of a given target), with
captum's methods, on all three families.

trilens supplies what captum's methods need and the LLM wrappers of captum lack: a forward function that scores every
step of every input at once (``forward.StepForward``: one forward pass per input and block of captum's rows, the
steps' backward passes batched), baselines built from the model's embeddings, and contrastive targets. The methods
themselves are captum's own."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from ..capture.grad_hooks import embedding_modules
from ..capture.objectives import token_id
from ..errors import InputError
from ..provenance import jsonable, provenance
from ..sources import is_source, model_inputs
from .forward import StepForward
from .methods import MethodSpec, check_step_scores, method_spec
from .result import AttributionResult
from .step_scores import step_scores as compute_step_scores
from .targets import AttributionSteps, attribution_steps

if TYPE_CHECKING:
    from ..model import Model

PASS_BUDGET = 2**30  # bytes: about what one batched forward of interpolation points (or perturbations) may hold
_TOKEN_BASELINES = ("pad", "unk", "mask", "eos", "bos")


def attribute(model: Model, inputs: Any, targets: Any = None, *, method: str = "saliency", contrast: Any = None,
              score: str | None = None, step_scores: Sequence[str] = ("probability",), baseline: Any = None,
              include_target: bool = True, n_steps: int = 50, method_args: dict[str, Any] | None = None,
              position: Any = None, batch_size: int = 8, internal_batch_size: int | None = None,
              step_batch: int | None = None, max_new_tokens: int = 20, progress: bool = False, truncate: bool = False,
              split: str | None = None, text_column: str = "text", target_column: str | None = None,
              **generate_kwargs: Any) -> AttributionResult:
    """Per input and step, the attribution of the step's score to every source (and target-prefix) token.

    Args:
        inputs: prompts (decoder-only), sources or ``(source, target)`` pairs (encoder-decoder), texts with mask tokens
            (encoder-only: every mask is a step), or the ``StepInputs`` of an earlier run; or a data source (a
            ``datasets`` object, a ``save_to_disk`` folder, Parquet, JSON lines or CSV as a ``Path``) whose
            ``text_column`` (and ``target_column``: the targets, or an encoder-decoder's target side) are read from
            ``split``.
        targets: one target per input (a text continuing the prompt, or token ids), teacher-forced; encoder-only: the
            token for each mask (one, or a list per input). None: the model generates greedily first
            (``max_new_tokens``, ``generate_kwargs``); an encoder's top prediction at each mask.
        method: one of ``list_attribution_methods()`` (aliases such as ``"ig"`` too).
        contrast: why the token rather than a foil: an aligned contrast text (one token per step), a list of foil
            tokens per step, or one token id for all steps; one for all inputs or a list of one per input. The score
            becomes score(token) - score(foil).
        score: what is attributed: ``"logprob"`` (default), ``"prob"`` (default with a contrast, p(y) - p(foil) as Yin &
            Neubig) or ``"logit"``.
        step_scores: scores per step beside the attributions (see ``list_attribution_methods()["step_scores"]``).
        baseline: ``"zeros"`` (zero embeddings), ``"pad"``/``"unk"``/``"mask"``/``"eos"``/``"bos"`` or any token (its
            embedding at every position); default: the method's own (zeros; pad tokens for layer integrated
            gradients). Gradient SHAP needs one.
        include_target: encoder-decoders: attribute to the decoder's input (the target prefix) too.
        n_steps: interpolation points of integrated gradients.
        method_args: more keyword arguments for captum's ``attribute`` (e.g. ``{"abs": True}`` for saliency,
            ``{"method": "riemann_trapezoid"}`` for integrated gradients).
        position: encoder-only: the position attributed (0 first, -1 last, or one per input) instead of the masks.
        batch_size: inputs per pass.
        internal_batch_size: captum's rows per forward pass for integrated gradients and perturbation methods (a row is
            one input and step); default: as many interpolation points as fit ``PASS_BUDGET``.
        step_batch: steps per batched backward pass (see ``model.gradients``).
    """
    spec = method_spec(method)
    if is_source(inputs):
        inputs, targets = model_inputs(inputs, model.family, split=split, text_column=text_column,
                                       target_column=target_column)
    if not model.has_trained_head:
        raise InputError(f"{model.name} has no trained LM head: there is no predicted token's score to attribute. Load "
                         "a model with its language-modelling head.")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, not {batch_size}.")
    if spec.steps and n_steps < 1:
        raise InputError(f"n_steps must be at least 1, not {n_steps}.")
    score = score or ("prob" if contrast is not None else "logprob")
    names = check_step_scores(step_scores, contrast is not None)
    base = _baseline_choice(model, spec, baseline)
    steps = attribution_steps(model, inputs, targets, contrast=contrast, position=position,
                              max_new_tokens=max_new_tokens, truncate=truncate, **generate_kwargs)
    stacks = list(model.stacks) if model.family != "encoder-decoder" or include_target else ["encoder"]
    n = len(steps.rows)
    chunks = []
    for start in tqdm(range(0, n, batch_size), desc=f"attribute ({spec.name})", disable=not progress,
                      total=-(-n // batch_size)):
        rows = slice(start, min(n, start + batch_size))
        chunks.append(_chunk(model, spec, steps, rows, stacks, score, base, n_steps, method_args or {},
                             internal_batch_size, step_batch, names, progress))
    has_target = model.family == "decoder" or len(stacks) > 1  # an encoder-decoder's prefix only when asked for
    raw, deltas = _assemble(model, steps, chunks, spec, has_target)
    valid = steps.scored.valid
    scores = {name: torch.cat([c["scores"][name] for c in chunks]) for name in names}
    params = {"method": spec.name, "captum": spec.captum, "score": score, "contrast": jsonable(contrast),
              "baseline": base,
              "include_target": include_target, "n_steps": n_steps if spec.steps else None,
              "method_args": jsonable(method_args or {}), "targets": "generated" if steps.generated else "given",
              "step_scores": names, "batch_size": batch_size, "internal_batch_size": internal_batch_size,
              "max_new_tokens": max_new_tokens}
    return AttributionResult(raw=raw, has_hidden=spec.kind != "perturbation", valid=valid,
                             source_tokens=steps.source_tokens,
                             target_tokens=steps.target_tokens if has_target else [[] for _ in steps.rows],
                             step_tokens=steps.step_tokens, step_scores=scores, deltas=deltas, family=model.family,
                             info=provenance(model, "attribute", params, n,
                                             rows_run=sum(c["rows_run"] for c in chunks)))


def _baseline_choice(model: Model, spec: MethodSpec, baseline: Any) -> Any:
    """The baseline to use: ``"zeros"`` or a token id; None for methods that take none."""
    if spec.baseline == "none":
        if baseline is not None:
            raise InputError(f"{spec.name} takes no baseline; leave baseline= out (or use integrated_gradients).")
        return None
    if baseline is None:
        if spec.baseline == "required":
            raise InputError(f"{spec.name} needs a baseline: pass baseline='zeros', 'pad', 'unk', 'mask' or a token.")
        baseline = "pad" if spec.kind == "layer" else "zeros"
    if baseline == "zeros":
        if spec.kind == "layer":
            raise InputError(f"{spec.name} takes its baseline as tokens (e.g. 'pad', 'unk'); for a zero-embedding "
                             "baseline use integrated_gradients.")
        return "zeros"
    if isinstance(baseline, str) and baseline in _TOKEN_BASELINES:
        tid = getattr(model.tokenizer, f"{baseline}_token_id", None) if model.tokenizer is not None else None
        if tid is None:
            raise InputError(f"this model's tokenizer has no {baseline} token; pass another baseline "
                             f"({', '.join(('zeros',) + _TOKEN_BASELINES)} or a token).")
        return int(tid)
    return token_id(model, baseline)


def _chunk(model: Model, spec: MethodSpec, steps: AttributionSteps, rows: slice, stacks: list[str], score: str,
           base: Any, n_steps: int, method_args: dict[str, Any], internal_batch_size: int | None,
           step_batch: int | None, names: Sequence[str], progress: bool) -> dict[str, Any]:
    """captum's attributions for the inputs ``rows`` (``{stack: [input, step, position(, d)]}``), the deltas, and the
    step scores ``names``."""
    import captum.attr as ca

    batch = model.encode(steps.rows[rows]).to(model.device)
    scored = steps.scored.take(rows)
    n_in, n_t = scored.positions.shape
    fwd = StepForward(model, batch, scored, score, stacks, ids=spec.kind == "layer", share=spec.share,
                      step_batch=step_batch)
    per_pass = internal_batch_size or n_in * n_t * _points_per_pass(model, batch, n_in, n_t)
    kwargs: dict[str, Any] = dict(spec.defaults)
    if spec.kind == "layer":  # inputs are ids, each input's repeated once per step; captum embeds them
        method = ca.LayerIntegratedGradients(fwd, layer=fwd.embed[stacks[0]] if len(stacks) == 1
                                             else [fwd.embed[st] for st in stacks])
        inputs: tuple = tuple(batch.ids[st].repeat_interleave(n_t, 0) for st in stacks)
        kwargs["baselines"] = tuple(torch.full_like(i, base) for i in inputs)
    else:  # inputs are each input's token embeddings, repeated once per step
        method = getattr(ca, spec.captum)(fwd)
        modules = embedding_modules(model)
        with torch.no_grad():
            embeds = [modules[st](batch.ids[st]) for st in stacks]
        inputs = tuple(e.repeat_interleave(n_t, 0).requires_grad_(spec.kind == "gradient") for e in embeds)
        if base is not None:
            kwargs["baselines"] = tuple(_baseline(modules[st], e, base) for st, e in zip(stacks, embeds))
    if spec.steps:
        kwargs.update(n_steps=n_steps, internal_batch_size=per_pass)
    if spec.delta:
        kwargs["return_convergence_delta"] = True
    if spec.name == "occlusion":  # one token (all of its embedding) at a time
        kwargs["sliding_window_shapes"] = tuple((1, e.shape[-1]) for e in inputs)
    if spec.name == "feature_ablation":  # one feature per token, numbered across the stacks
        starts = torch.tensor([0] + [e.shape[1] for e in inputs]).cumsum(0)
        kwargs["feature_mask"] = tuple((start + torch.arange(e.shape[1]))[None, :, None].expand(1, -1, e.shape[-1])
                                       for start, e in zip(starts.tolist(), inputs))
    if spec.kind == "perturbation":
        kwargs.update(perturbations_per_eval=max(1, per_pass // (n_in * n_t)), show_progress=progress)
    kwargs.update(method_args)
    try:
        out = method.attribute(inputs, **kwargs)
    except TypeError as err:
        raise InputError(f"captum's {spec.captum}.attribute refused the arguments ({err}); check method_args.") from err
    except RuntimeError as err:
        if spec.name == "deeplift" and "DeepLift" in str(err):
            raise InputError(f"captum's DeepLift cannot run on {model.name}: its rule needs every nonlinearity module "
                             "to keep the input and output of a single call, which this architecture's bridged modules "
                             "do not (captum: " + str(err).split(".")[0] + "). Use integrated_gradients or "
                             "input_x_gradient.") from err
        raise
    attrs, delta = out if spec.delta else (out, None)
    attrs = [attrs] if torch.is_tensor(attrs) else list(attrs)
    found = {}
    for st, a in zip(stacks, attrs):
        a = a.detach().float().reshape(n_in, n_t, *a.shape[1:])
        found[st] = a[..., 0] if spec.kind == "perturbation" else a
    deltas = None
    if delta is not None:
        deltas = delta.detach().float().reshape(-1, n_in * n_t).abs().amax(0).reshape(n_in, n_t)
    return {"attrs": found, "deltas": deltas, "rows_run": fwd.rows_run,
            "scores": compute_step_scores(model, batch, scored, names)}


def _baseline(module: torch.nn.Module, embeds: torch.Tensor, base: Any) -> torch.Tensor:
    """``[1, position, d]``: zeros, or the embedding of token ``base`` at every position."""
    if base == "zeros":
        return torch.zeros_like(embeds[:1])
    with torch.no_grad():
        return module(torch.full(embeds.shape[:2], int(base), dtype=torch.long, device=embeds.device)[:1])


def _points_per_pass(model: Model, batch: Any, n_in: int, n_t: int) -> int:
    """Interpolation points (or perturbations) per forward pass: as many as keep one pass near ``PASS_BUDGET``."""
    width = sum(int(m.shape[1]) for m in batch.masks.values())
    layers = sum(model.n_layers.values())
    per_input = width * (model.vocab_size + 8 * n_t * model.d_model + 40 * layers * model.d_model) * 4
    return max(1, PASS_BUDGET // max(1, n_in * per_input))


def _assemble(model: Model, steps: AttributionSteps, chunks: list[dict[str, Any]], spec: MethodSpec,
              has_target: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """``{"source": [input, step, token(, d)], "target": ...}`` from the chunks' per-stack attributions: an
    encoder-decoder's parts are its two stacks; a decoder-only sequence holds the prompt, then the prefix."""
    n, n_t = steps.scored.positions.shape
    extra = () if spec.kind == "perturbation" else (model.d_model,)
    widths = {"source": max(steps.source_lengths), "target": max(steps.target_lengths) if has_target else 0}
    raw = {p: torch.zeros(n, n_t, w, *extra) for p, w in widths.items()}
    rows = [(c, i) for c in chunks for i in range(len(next(iter(c["attrs"].values()))))]
    for b, (c, i) in enumerate(rows):
        src, tgt = steps.source_lengths[b], steps.target_lengths[b] if has_target else 0
        if model.family == "encoder-decoder":
            raw["source"][b, :, :src] = c["attrs"]["encoder"][i, :, :src]
            raw["target"][b, :, :tgt] = c["attrs"]["decoder"][i, :, :tgt] if tgt else 0
        else:
            a = next(iter(c["attrs"].values()))[i]
            raw["source"][b, :, :src] = a[:, :src]
            raw["target"][b, :, :tgt] = a[:, src: src + tgt]
    deltas = torch.cat([c["deltas"] for c in chunks]) * steps.scored.valid if chunks[0]["deltas"] is not None else None
    return raw, deltas
