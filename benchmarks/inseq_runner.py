"""Inseq 0.7.1 attributions of teacher-forced targets, for comparing trilens with Inseq. Runs in the Inseq venv:

    $(python benchmarks/inseq_env.py) benchmarks/inseq_runner.py --model DIR --method saliency|integrated_gradients \\
        --ig-steps N --batch-size 8 --inputs FILE.json --out FILE.safetensors

``DIR`` is a local Hugging Face model folder with its tokenizer. ``FILE.json`` is a list of
``{"source": [ids], "target": [ids]}``; for a decoder-only model the source is the prompt and the target its
continuation. Nothing is downloaded (``HF_HUB_OFFLINE=1``).

What Inseq is asked for (``AttributionModel.attribute``):

* the model: ``inseq.load_model(DIR, method, device="cpu", model_kwargs={"attn_implementation": "eager"})``;
* targets forced: ``generated_texts`` = the target text (decoder-only: prompt + target, as Inseq requires);
* the attributed function: ``attributed_fn="probability"`` with ``logprob=True`` (Inseq's ``probability_fn`` with
  ``logprob=True`` is ``log_softmax(logits)[target]``; it has no separate "logprob" step function);
* no aggregation: the raw ``FeatureAttributionSequenceOutput.{source,target}_attributions`` (one value per embedding
  dimension), never ``.aggregate()``;
* saliency: ``abs=False`` as a keyword of ``attribute`` (Inseq hands keywords that captum's ``Saliency.attribute``
  takes to it, so the gradient keeps its sign);
* integrated gradients: ``n_steps=--ig-steps``; baseline all-zero embeddings (``--ig-baseline zeros``, the default).
  Inseq's own default baseline is NOT zeros: it passes the embeddings of ``[UNK]`` ids (``[EOS]`` kept where the
  input has ``[EOS]``); zeros come from switching Inseq's baseline off (``attribution_method.use_baselines = False``),
  so captum's ``IntegratedGradients`` uses its default, zeros. ``--ig-baseline unk`` keeps Inseq's.
  ``internal_batch_size``: captum's default (``None``: all ``n_steps`` points of every input of the batch in one
  forward and backward) unless ``--ig-internal-batch-size`` is given;
* ``batch_size=--batch-size``. Inseq 0.7.1 runs forced (teacher-forced) targets of decoder-only models one input at
  a time whatever ``batch_size`` says (it logs "Batched constrained decoding is currently not supported for
  decoder-only models. Using batch size of 1."); encoder-decoders keep the batch size.
* ``skip_special_tokens=True`` (``--special-tokens exact``): Inseq tokenizes with ``add_special_tokens=False``, so
  the tokenizer adds nothing (the zoo's T5 tokenizer would append ``[EOS]`` to both source and target); Inseq still
  puts the decoder start token before an encoder-decoder target. But Inseq then also deletes special-token strings
  from the texts, so ids of special tokens ([BOS], [EOS], ...) in the inputs are lost.
  ``--special-tokens tokenizer``: Inseq's default (``skip_special_tokens=False``: the tokenizer adds its special
  tokens, special tokens in the texts stay). ``auto`` (the default): ``exact`` if every item's ids survive it, else
  ``tokenizer`` if they survive that, else the run stops. The sidecar says which was used.
* Inseq tokenizes with ``truncation=True``: ids beyond the tokenizer's ``model_max_length`` (128 for the zoo models)
  would be cut; the round-trip check below catches that.

Inseq takes texts, not ids: each id list is decoded (``skip_special_tokens=False``,
``clean_up_tokenization_spaces=False``) and the text is encoded again exactly as Inseq will encode it; every item's
ids must come back unchanged (else the run stops, or with ``--allow-mismatch`` goes on and records the mismatch).

Output ``--out`` (safetensors, float32, NaN where Inseq leaves a position out of a step's prefix), per item ``i``
with P/S source (prompt) tokens, T target tokens and embedding size H:

* encoder-decoder: ``source_{i}`` [S, T, H]: the encoder input tokens (as given) x target steps;
  ``target_{i}`` [1 + T, T, H] (unless ``--no-attribute-target``): decoder inputs = the decoder start token, then
  the T target tokens, x steps; row r is filled for steps k >= r (step k's decoder input is start + target[:k]), so
  the last row (the last target token, never an input) is all NaN. With attribute_target, integrated gradients
  moves source and target-prefix embeddings together from the baseline (one path for both).
* decoder-only: Inseq gives only ``target_attributions`` over prompt + target: ``target_{i}`` [P + T, T, H], row r
  filled for steps k with r < P + k (step k predicts token P + k from tokens [0, P + k)); the last row is all NaN.
  ``source_{i}`` [P, T, H] is its first P rows (the prompt). No BOS is added unless the prompt ids hold one (Inseq
  prepends BOS only to an empty prompt, which this runner refuses).

Attributions are with respect to the token embeddings (the output of ``get_input_embeddings()``, which Inseq swaps
for captum's interpretable embedding while attributing): GPT-2's position embeddings are added later and are not
attributed.

Sidecar ``--out`` with ``.json``: wall time of the ``attribute`` call alone (``time.perf_counter``, model load and
text preparation excluded; with ``--repeats N`` the median of N calls, all N listed), peak RSS of that call (``VmHWM`` from ``/proc/self/status`` after resetting it through
``/proc/self/clear_refs`` just before the call; ``ru_maxrss`` is not used because on Linux it carries the parent's
peak across ``exec``), the process's peak RSS overall, the options Inseq recorded, the effective batch size, the
tokens and ids Inseq used per item, the round-trip check, captured warnings, and (``--self-check``) the largest
difference from a plain autograd computation of the same quantity.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import peak_rss_mb, reset_peak_rss, rss_mb


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        message = f"{record.name}: {record.getMessage()}"
        if message not in self.messages:
            self.messages.append(message)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="local Hugging Face model folder (with tokenizer)")
    p.add_argument("--method", required=True, choices=["saliency", "integrated_gradients"])
    p.add_argument("--ig-steps", type=int, default=50)
    p.add_argument("--ig-baseline", choices=["zeros", "unk"], default="zeros")
    p.add_argument("--ig-internal-batch-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--inputs", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--no-attribute-target", action="store_true", help="encoder-decoder: source attributions only")
    p.add_argument("--special-tokens", choices=["auto", "exact", "tokenizer"], default="auto")
    p.add_argument("--allow-mismatch", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--warmup", action="store_true", help="one untimed attribute call on the first item first")
    p.add_argument("--repeats", type=int, default=1, help="timed attribute calls (wall_s: their median)")
    p.add_argument("--self-check", action="store_true", help="compare with plain autograd after the timed call")
    return p.parse_args(argv)


def _texts(model, items, encoder_decoder: bool):
    decode = lambda ids: model.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    sources, targets = [], []
    for item in items:
        if not item["source"] or not item["target"]:
            raise SystemExit("every item needs a non-empty source (prompt) and target")
        sources.append(decode(item["source"]))
        targets.append(decode(item["target"] if encoder_decoder else item["source"] + item["target"]))
    return sources, targets


def _roundtrip(model, items, sources, targets, skip_special: bool, encoder_decoder: bool) -> list[dict]:
    """Encode the texts as Inseq will (same text clean-up, same flags) and compare with the given ids."""
    from inseq.utils.misc import format_input_texts

    sources, targets = format_input_texts(sources, targets, skip_special, model.special_tokens)
    problems = []
    for i, item in enumerate(items):
        src = model.encode(sources[i], add_special_tokens=not skip_special).input_ids[0].tolist()
        if encoder_decoder:
            want_tgt = [model.bos_token_id, *item["target"]]
            tgt = model.encode(targets[i], as_targets=True, add_special_tokens=not skip_special).input_ids[0].tolist()
        else:
            want_tgt = item["source"] + item["target"]
            tgt = model.encode(targets[i], add_special_tokens=not skip_special).input_ids[0].tolist()
        prefix_ok = encoder_decoder or targets[i].startswith(sources[i])
        if src != item["source"] or tgt != want_tgt or not prefix_ok:
            problems.append(
                {
                    "item": i,
                    "source_ids": src,
                    "want_source_ids": item["source"],
                    "target_ids": tgt,
                    "want_target_ids": want_tgt,
                    "text_prefix_ok": prefix_ok,
                }
            )
    return problems


def _self_check(model, items, tensors, method: str, encoder_decoder: bool, n_steps: int) -> dict:
    """Largest |Inseq - plain autograd| over all items and steps (and, for IG, captum's convergence gap).

    Saliency: d log p(y_k) / d embeddings. Integrated gradients (zero baseline only): x * sum_j w_j grad f(a_j x) with
    captum's default Gauss-Legendre nodes a_j and weights w_j, source and target prefix scaled together.
    """
    import torch
    from captum.attr._utils.approximation_methods import approximation_parameters

    hf, embed = model.model, model.model.get_input_embeddings()
    if method == "saliency":
        alphas, weights = [1.0], [1.0]
    else:
        step_sizes, alphas_fn = approximation_parameters("gausslegendre")
        alphas, weights = alphas_fn(n_steps), step_sizes(n_steps)
    worst, gaps = 0.0, []
    for i, item in enumerate(items):
        src, tgt = item["source"], item["target"]
        for k in range(len(tgt)):
            if encoder_decoder:
                xs = [embed(torch.tensor(src)), embed(torch.tensor([model.bos_token_id, *tgt[:k]]))]
                ours = [tensors[f"source_{i}"][:, k]]
                if f"target_{i}" in tensors:
                    ours.append(tensors[f"target_{i}"][: k + 1, k])
                f = lambda a, b: hf(inputs_embeds=a[None], decoder_inputs_embeds=b[None]).logits[0, -1]
            else:
                xs = [embed(torch.tensor((src + tgt)[: len(src) + k]))]
                ours = [tensors[f"target_{i}"][: len(src) + k, k]]
                f = lambda a: hf(inputs_embeds=a[None]).logits[0, -1]
            xs = [x.detach() for x in xs]
            scaled = len(ours)  # inputs moved along the path; the others stay as they are
            total = [torch.zeros_like(x) for x in xs[:scaled]]
            for a, w in zip(alphas, weights):
                leaves = [(a * x).requires_grad_() for x in xs[:scaled]]
                lp = torch.log_softmax(f(*leaves, *xs[scaled:]), -1)[tgt[k]]
                for t, g in zip(total, torch.autograd.grad(lp, leaves)):
                    t += w * g
            if method != "saliency":
                total = [t * x for t, x in zip(total, xs)]
                with torch.no_grad():
                    lp1 = torch.log_softmax(f(*xs), -1)[tgt[k]]
                    lp0 = torch.log_softmax(f(*[torch.zeros_like(x) for x in xs[:scaled]], *xs[scaled:]), -1)[tgt[k]]
                gaps.append(abs(sum(o.sum().item() for o in ours) - (lp1 - lp0).item()))
            for t, o in zip(total, ours):
                worst = max(worst, (t - o).abs().max().item())
    out = {"max_abs_diff_vs_autograd": worst}
    if gaps:
        out["ig_abs_convergence_gap_max"] = max(gaps)  # |sum(attr) - (f(x) - f(0))|, captum's "delta"
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    records = _Records()
    logging.getLogger().addHandler(records)
    warnings.simplefilter("default")
    warnings.simplefilter("ignore", ResourceWarning)  # inseq leaves its model_config.yaml open
    logging.captureWarnings(True)

    import importlib.metadata as md

    import inseq
    import torch
    from safetensors.torch import save_file

    if args.threads:
        torch.set_num_threads(args.threads)
    items = json.loads(args.inputs.read_text())

    t0 = time.perf_counter()
    model = inseq.load_model(str(args.model), args.method, device="cpu", model_kwargs={"attn_implementation": "eager"})
    model.model.eval()
    load_s = time.perf_counter() - t0
    encoder_decoder = bool(model.is_encoder_decoder)
    sources, targets = _texts(model, items, encoder_decoder)
    modes = ["exact", "tokenizer"] if args.special_tokens == "auto" else [args.special_tokens]
    for mode in modes:
        found = _roundtrip(model, items, sources, targets, mode == "exact", encoder_decoder)
        if mode == modes[0]:
            special_tokens, problems = mode, found
        if not found:
            special_tokens, problems = mode, found
            break
    skip_special = special_tokens == "exact"
    if problems and not args.allow_mismatch:
        raise SystemExit(f"ids do not survive decode -> Inseq's encode for {len(problems)} item(s): {problems[:3]}")

    attribute_target = encoder_decoder and not args.no_attribute_target
    kwargs = {
        "attributed_fn": "probability",
        "logprob": True,
        "batch_size": args.batch_size,
        "attribute_target": attribute_target,
        "skip_special_tokens": skip_special,
        "show_progress": False,
        "pretty_progress": False,
    }
    if args.method == "saliency":
        kwargs["abs"] = False
    else:
        kwargs["n_steps"] = args.ig_steps
        if args.ig_internal_batch_size:
            kwargs["internal_batch_size"] = args.ig_internal_batch_size
        model.attribution_method.use_baselines = args.ig_baseline == "unk"

    effective_batch = model.validate_attribute_args(
        input_texts=sources,
        generated_texts=targets,
        has_generated_texts=True,
        attribution_method=model.attribution_method,
        batch_size=args.batch_size,
        attr_pos_start=None,
        attr_pos_end=None,
    )
    if args.warmup:
        model.attribute(sources[:1], targets[:1], **kwargs)

    rss_before, walls, peak_call = rss_mb(), [], 0.0
    for _ in range(args.repeats):
        reset_peak_rss()
        start = time.perf_counter()
        out = model.attribute(sources, targets, **kwargs)
        walls.append(time.perf_counter() - start)
        peak_call = max(peak_call, peak_rss_mb())
    wall_s = statistics.median(walls)

    tensors, per_item = {}, []
    for i, (item, seq) in enumerate(zip(items, out.sequence_attributions)):
        # Inseq's own lengths (they differ from the given ones only with --allow-mismatch)
        P, T = len(seq.source), seq.attr_pos_end - seq.attr_pos_start
        if not problems and (P, T) != (len(item["source"]), len(item["target"])):
            raise SystemExit(f"item {i}: Inseq used {P} source and {T} target tokens, not the given ones")
        if encoder_decoder:
            src_attr = seq.source_attributions
            tgt_attr = seq.target_attributions if attribute_target else None
            want_src, want_tgt = (P, T), (1 + T, T)
        else:
            tgt_attr = seq.target_attributions
            src_attr = tgt_attr[:P]
            want_src, want_tgt = (P, T), (P + T, T)
        if tuple(src_attr.shape[:2]) != want_src or (tgt_attr is not None and tuple(tgt_attr.shape[:2]) != want_tgt):
            raise SystemExit(
                f"item {i}: Inseq returned shapes {tuple(src_attr.shape)} / "
                f"{None if tgt_attr is None else tuple(tgt_attr.shape)}, expected {want_src} / {want_tgt}"
            )
        tensors[f"source_{i}"] = src_attr.detach().float().contiguous().clone()
        if tgt_attr is not None:
            tensors[f"target_{i}"] = tgt_attr.detach().float().contiguous().clone()
        per_item.append(
            {
                "source_tokens": [t.token for t in seq.source],
                "source_ids": [t.id for t in seq.source],
                # rows of target_{i}: decoder-only = prompt + target, encoder-decoder = decoder start + target
                "target_axis_tokens": [t.token for t in seq.target],
                "target_axis_ids": [t.id for t in seq.target],
                # columns (steps): the forced target tokens
                "step_tokens": [t.token for t in seq.target[seq.attr_pos_start : seq.attr_pos_end]],
                "attr_pos_start": seq.attr_pos_start,
                "attr_pos_end": seq.attr_pos_end,
                "source_shape": list(tensors[f"source_{i}"].shape),
                "target_shape": None if tgt_attr is None else list(tensors[f"target_{i}"].shape),
            }
        )
        steps = [t.id for t in seq.target[seq.attr_pos_start : seq.attr_pos_end]]
        if not problems and steps != item["target"]:
            raise SystemExit(f"item {i}: Inseq attributed steps {steps}, not the target {item['target']}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out))
    info = {k: v for k, v in out.info.items() if k not in ("input_texts", "generated_texts")}
    sidecar = {
        "versions": {n: md.version(n) for n in ("inseq", "torch", "transformers", "captum", "typeguard")},
        "model": str(args.model),
        "model_class": type(model.model).__name__,
        "encoder_decoder": encoder_decoder,
        "method": args.method,
        "n_items": len(items),
        "batch_size": args.batch_size,
        "effective_batch_size": effective_batch,
        "attributed_fn": "probability (logprob=True): log_softmax(logits)[target]",
        "saliency_abs": False if args.method == "saliency" else None,
        "ig_steps": args.ig_steps if args.method == "integrated_gradients" else None,
        "ig_baseline": (
            (
                "zeros (captum default; Inseq use_baselines=False)"
                if args.ig_baseline == "zeros"
                else "Inseq default: [UNK] embeddings, [EOS] kept"
            )
            if args.method == "integrated_gradients"
            else None
        ),
        "ig_internal_batch_size": (args.ig_internal_batch_size or "captum default (None: all n_steps at once)")
        if args.method == "integrated_gradients"
        else None,
        "attribute_target": attribute_target,
        "special_tokens": special_tokens,
        "threads": torch.get_num_threads(),
        "warmup": args.warmup,
        "load_s": load_s,
        "wall_s": wall_s,
        "wall_s_all": walls,
        "rss_before_attribute_mb": rss_before,
        "peak_rss_attribute_mb": peak_call,
        "peak_rss_mb_method": "VmHWM (/proc/self/status) after writing 5 to /proc/self/clear_refs before the call",
        "process_peak_rss_mb": peak_rss_mb(),
        "roundtrip_mismatches": problems,
        "inseq_info": json.loads(json.dumps(info, default=str)),
        "items": per_item,
        "warnings": records.messages,
    }
    if args.self_check:
        if args.method == "integrated_gradients" and args.ig_baseline != "zeros":
            sidecar["self_check"] = "only for the zero baseline"
        else:
            sidecar["self_check"] = _self_check(model, items, tensors, args.method, encoder_decoder, args.ig_steps)
    args.out.with_suffix(".json").write_text(json.dumps(sidecar, indent=1))
    print(
        json.dumps(
            {
                "out": str(args.out),
                "wall_s": round(wall_s, 4),
                "peak_rss_attribute_mb": round(peak_call, 1),
                "effective_batch_size": effective_batch,
                "self_check": sidecar.get("self_check"),
            }
        )
    )


if __name__ == "__main__":
    main()
