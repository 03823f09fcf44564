"""Attention benchmark (issue 14): source sensitivity S_l(t) for every decoder layer over a 64-step target, and
relevancy maps for a 32-step target.

    python benchmarks/attention.py [--quick] [--models gpt t5 gpt2-small] [--parts sensitivity relevancy]

One input: a 16-token source (decoder-only: the prompt) and a 64-token teacher-forced target of random ids (zoo:gpt:
48, what fits its 64-token context).

  trilens exact      ``source_sensitivity(method="exact")``: forward mode, one Jacobian-vector product per source
                     coordinate (N x d directions, vmapped), every layer and step at once
  loop exact         one forward pass with a graph, then per layer and step one autograd Jacobian of the attention
                     output at that step's position w.r.t. the source embeddings (d backward rows, batched with
                     ``is_grads_batched``): plain autograd, written with care
  naive exact        per layer and step, ``torch.autograd.functional.jacobian`` of a function that runs the model on
                     the source embeddings and returns that layer's attention output at that step's position (its
                     defaults: a forward pass and d separate backward passes per call) — the issue's "naive loop of one
                     autograd Jacobian per step and layer"
  trilens estimate   ``method="estimate"``, 32 Gaussian directions: ||J||_F^2 = E ||J v||^2
  loop estimate      the same estimator on the output side, per layer and step: 32 batched backward rows of J^T v

Relevancy (Chefer et al.), 32 target steps after a 16-token source:

  trilens            ``relevancy_maps(methods=("relevancy",))``: one forward pass, every step's gradients at every
                     attention pattern from batched backward passes, the rules batched over steps
  loop               per step, one forward and one backward pass (``model.gradients`` with that step's ``TokenScore``),
                     then the same rules for that step

Exact methods must agree to 1e-4 (relative); estimates are compared with the exact values (or, where the exact loop is
too slow to run, with each other) in units of their standard errors. Ratios are against the loop in the same run.
On the GPT-2-small shape the exact methods are left out: 16 x 768 directions (trilens) or 12 x 64 x 768 backward
rows (loop) take hours on this CPU; its loop estimate runs every 16th step and its time is scaled by 16 (each step is
the same work: one batched backward per layer).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import torch

warnings.filterwarnings("ignore")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SOURCE, STEPS, PROBES = 16, 64, 32


def load(name: str, quick: bool):
    import transformers as tf

    import trilens

    if name == "gpt2-small":
        cfg = tf.GPT2Config(n_layer=4 if quick else 12, n_embd=256 if quick else 768, n_head=4 if quick else 12)
        cfg._attn_implementation = "eager"
        torch.manual_seed(0)
        return trilens.load(tf.GPT2LMHeadModel(cfg).eval())
    return trilens.load(f"zoo:{name}")


def step_batch(model, steps: int):
    from trilens.capture.steps_input import step_inputs

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, model.vocab_size, (SOURCE + steps,), generator=g).tolist()
    if model.family == "decoder":
        return step_inputs(model, [ids[:SOURCE]], [ids[SOURCE:]])
    return step_inputs(model, [(ids[:SOURCE], ids[SOURCE:])])


def loop(model, steps, probes: int | None, every: int = 1):
    """Per layer and step: the Jacobian's Frobenius norm (``probes=None``) or its output-side estimate (only every
    ``every``-th step; the others stay NaN)."""
    from trilens.attention.sensitivity import view_sites
    from trilens.capture.grad_hooks import frozen_weights, input_embeddings, keep_hook

    names = view_sites(model)["attention"]
    batch = model.encode(steps.rows)
    store = {}
    with frozen_weights(model.hf_model), torch.enable_grad(), input_embeddings(model) as embeds, \
            model.hooks([(n, keep_hook(store, n)) for n in names]):
        model.hf_model(**batch.forward_kwargs())
    src = embeds[steps.source_stack]
    d = model.d_model
    g = torch.Generator().manual_seed(1)
    out, se = torch.full((len(names), steps.n_steps), float("nan")), torch.full((len(names), steps.n_steps), float("nan"))
    for i, name in enumerate(names):
        act = store[name]
        for t in range(0, steps.n_steps, every):
            p = int(steps.positions[0, t])
            k = d if probes is None else probes
            seeds = torch.zeros(k, *act.shape)
            seeds[:, 0, p] = torch.eye(d) if probes is None else torch.randn(k, d, generator=g)
            (jac,) = torch.autograd.grad(act, src, seeds, retain_graph=True, is_grads_batched=True)
            sq = jac[:, 0, :SOURCE].pow(2).sum((1, 2))
            out[i, t] = sq.sum().sqrt() if probes is None else sq.mean().sqrt()
            se[i, t] = 0 if probes is None else sq.std() / k ** 0.5 / (2 * out[i, t])
    return out, se


def relevancy_loop(model, steps):
    """Per step: one forward and one backward for that step's score, then the rules: ``[steps, source]``."""
    from trilens import TokenScore
    from trilens.attention.relevancy import (
        encoder_decoder_rule,
        gradient_weighted,
        self_attention_rule,
    )

    kinds = ["attn_pattern"] + (["cross_attn_pattern"] if model.family == "encoder-decoder" else [])
    rows = []
    for t in range(steps.n_steps):
        p, token = int(steps.positions[0, t]), int(steps.step_ids[0, t])
        g = model.gradients(steps.rows, TokenScore(token=token, position=p), sites=kinds, embeddings=False)

        def weighted(kind, stack):
            names = sorted((n for n, s in g.sites.items() if s.kind == kind and s.stack == stack), key=lambda n: g.sites[n].layer)
            return [gradient_weighted(g.activation(n), g.grad(n)) for n in names]

        if model.family == "encoder-decoder":
            r_qi, _ = encoder_decoder_rule(weighted("attn_pattern", "encoder"), weighted("attn_pattern", "decoder"),
                                           weighted("cross_attn_pattern", "decoder"))
            rows.append(r_qi[0, 0, t])
        else:
            rows.append(self_attention_rule(weighted("attn_pattern", "decoder"))[0, 0, p, :SOURCE])
    return torch.stack(rows)


def relevancy_table(names: list[str], quick: bool) -> None:
    from trilens.attention import relevancy_maps

    n_steps = 8 if quick else 32
    print(f"\nrelevancy: source {SOURCE} tokens, {n_steps} target steps; median of 3 interleaved rounds")
    print(f"{'model':>10} {'layers':>12} {'trilens s':>9} {'loop s':>8} {'speed-up':>8} {'max |diff|':>10} {'relative':>8}")
    for name in names:
        model = load(name, quick)
        steps = step_batch(model, n_steps)
        fns = {"trilens": lambda: relevancy_maps(model, steps, methods=("relevancy",)).maps["relevancy"]["source"][0],
               "loop": lambda: relevancy_loop(model, steps)}
        fns["trilens"]()  # warm-up
        times: dict[str, list[float]] = {k: [] for k in fns}
        results: dict[str, torch.Tensor] = {}
        for _ in range(3):
            for k, fn in fns.items():
                t, value = timed(fn)
                times[k].append(t)
                results[k] = value
        med = {k: sorted(v)[1] for k, v in times.items()}
        ours, ref = results["trilens"], results["loop"]
        diff = float((ours - ref).abs().max())
        print(f"{name:>10} {str(dict(model.n_layers)):>12} {med['trilens']:>9.2f} {med['loop']:>8.2f} "
              f"{med['loop'] / med['trilens']:>7.1f}x {diff:>10.1e} {diff / float(ref.abs().max()):>8.1e}", flush=True)


def naive(model, steps):
    """Per layer and step, ``torch.autograd.functional.jacobian`` with its defaults: ``[layers, steps]``."""
    from torch.autograd.functional import jacobian

    from trilens.attention.sensitivity import view_sites
    from trilens.capture.grad_hooks import frozen_weights, keep_hook
    from trilens.capture.jvp import _embeddings, replaced_embeddings

    names = view_sites(model)["attention"]
    batch = model.encode(steps.rows)
    stack = steps.source_stack
    with torch.no_grad():
        embeds = _embeddings(model, batch, stack)
    out = torch.zeros(len(names), steps.n_steps)
    with frozen_weights(model.hf_model):
        for i, name in enumerate(names):
            for t in range(steps.n_steps):
                p = int(steps.positions[0, t])

                def f(src, name=name, p=p):
                    store = {}
                    with replaced_embeddings(model, {stack: torch.cat([src, embeds[:, SOURCE:]], 1)}), \
                            model.hooks([(name, keep_hook(store, name))]):
                        model.hf_model(**batch.forward_kwargs())
                    return store[name][0, p]

                out[i, t] = jacobian(f, embeds[:, :SOURCE]).norm()
    return out


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def main() -> None:
    from trilens.attention.sensitivity import source_sensitivity

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="16 steps, a 4-layer GPT-2 shape: a smoke run")
    parser.add_argument("--models", nargs="+", default=["gpt", "t5", "gpt2-small"])
    parser.add_argument("--parts", nargs="+", choices=["sensitivity", "relevancy"], default=["sensitivity", "relevancy"])
    args = parser.parse_args()
    if "relevancy" in args.parts:
        relevancy_table(args.models, args.quick)
    if "sensitivity" not in args.parts:
        return
    n_steps = 16 if args.quick else STEPS
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; source {SOURCE} tokens, {n_steps} steps, "
          f"{PROBES} probes for the estimates")
    print(f"{'model':>10} {'layers':>6} {'d':>4} {'steps':>5} {'trilens exact s':>15} {'loop exact s':>12} {'speed-up':>8} "
          f"{'max rel diff':>12} {'trilens est s':>13} {'loop est s':>10} {'speed-up':>8} {'est |z| median':>14}")
    naive_cols: list[str] = []
    for name in args.models:
        model = load(name, args.quick)
        # zoo:gpt's context is 64 tokens: its target is what fits after the source
        steps = step_batch(model, min(n_steps, (model.max_length or 10**6) - SOURCE) if model.family == "decoder" else n_steps)
        L = model.n_layers["decoder"]
        exact = not (name == "gpt2-small" and not args.quick)
        source_sensitivity(model, steps, method="estimate", probes=2)  # warm-up
        t_est, est = timed(lambda: source_sensitivity(model, steps, method="estimate", probes=PROBES))
        # GPT-2-small: the loop runs every 16th step only (one batched backward per layer and step, each step the
        # same work) and its time is scaled to all steps; a full run takes about 40 minutes here
        every = 1 if exact else 16
        t_lest, (lest, lest_se) = timed(lambda: loop(model, steps, PROBES, every))
        t_lest *= every
        ours_est, ours_se = est["attention"][:, 0], est["attention_se"][:, 0]
        if exact:
            t_ex, ex = timed(lambda: source_sensitivity(model, steps, method="exact"))
            t_lex, (lex, _) = timed(lambda: loop(model, steps, None))
            t_nai, nai = timed(lambda: naive(model, steps))
            ref = ex["attention"][:, 0]
            rel = max(float(((ref - r).abs() / r.abs().clamp_min(1e-12)).max()) for r in (lex, nai))
            naive_cols.append(f"{name:>10} {t_ex:>15.2f} {t_nai:>13.2f} {t_nai / t_ex:>7.1f}x")
            z = ((ours_est - ref).abs() / ours_se).median()
            cols = f"{t_ex:>15.2f} {t_lex:>12.2f} {t_lex / t_ex:>7.1f}x {rel:>12.1e}"
        else:
            z = ((ours_est - lest).abs() / (ours_se.pow(2) + lest_se.pow(2)).sqrt()).nanmedian()
            cols = f"{'-':>15} {'-':>12} {'-':>8} {'-':>12}"
        print(f"{name:>10} {L:>6} {model.d_model:>4} {steps.n_steps:>5} {cols} {t_est:>13.2f} {t_lest:>10.2f} {t_lest / t_est:>7.1f}x "
              f"{float(z):>14.2f}", flush=True)
    if naive_cols:
        print(f"\nagainst the naive loop (torch.autograd.functional.jacobian per layer and step):\n"
              f"{'model':>10} {'trilens exact s':>15} {'naive exact s':>13} {'speed-up':>8}")
        print("\n".join(naive_cols))
    print("est |z|: |trilens estimate - exact| / its standard error (median over layers and steps; the GPT-2-small shape: "
          "against the loop's estimate, over both standard errors). About 0.67 is what unbiased estimates give.")


if __name__ == "__main__":
    main()
