"""Gradients benchmark (issue 12): per-step input-embedding gradients of a teacher-forced target.

    python benchmarks/gradients.py [--quick] [--models gpt t5 gpt2-small]

For each model, batch size (1 and 8) and target length (8, 32, 64 steps), four ways to get d score(y_t) / d embeddings
for every step t (score = log-probability of the target token), all on the same HF modules with frozen weights:

  trilens     ``model.gradients(inputs, StepScores())``: one forward pass; every step's gradient at the LM head's input
              from one backward through the head; the steps' backward passes through the body batched
              (``is_grads_batched``) in chunks of about ``STEP_ROWS`` rows; elementwise activations backpropagate by
              one multiplication with the derivative saved in the forward; encoder-decoders go back through the
              decoder per chunk of steps and through the encoder for many steps at once
  one-step    the same with ``step_batch=1``: each step's backward through the body on its own (no encoder split)
  loop        one forward, then a Python loop of one ``torch.autograd.grad`` per step from log p(y_t), through the LM head
  prefix      per step, a forward and a backward on the growing target prefix (what Inseq does; here the 8 inputs of a
              batch share each pass, where Inseq runs decoder-only targets one input at a time)

Every method's gradients must equal the loop's to 1e-5. Ratios are against the loop, measured in the same run
(interleaved rounds, median). A second table says where the time goes, with trilens run again without each of its
speed-ups (for the longest target).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from contextlib import contextmanager

import torch

warnings.filterwarnings("ignore")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPT = 16  # decoder-only: prompt tokens before the target; encoder-decoder: source tokens


def load_models(names: list[str], quick: bool):
    import transformers as tf

    import trilens

    out = {}
    for name in names:
        if name == "gpt2-small":
            cfg = tf.GPT2Config(n_layer=4 if quick else 12, n_embd=256 if quick else 768, n_head=4 if quick else 12)
            cfg._attn_implementation = "eager"
            torch.manual_seed(0)
            out[name] = trilens.load(tf.GPT2LMHeadModel(cfg).eval())
        else:
            out[name] = trilens.load(f"zoo:{name}")
    return out


def make_inputs(model, batch: int, steps: int, seed: int):
    """Token ids (decoder-only: prompt + target, one row per input) or (source ids, target ids) pairs, no padding."""
    g = torch.Generator().manual_seed(seed)
    vocab = model.vocab_size
    low = 10 if vocab > 100 else 0  # skip the zoo's special tokens
    if model.family == "decoder":
        limit = model.max_length or 10**9
        steps = min(steps, limit - 1)
        prompt = min(PROMPT, limit - steps)
        return torch.randint(low, vocab, (batch, prompt + steps), generator=g), prompt, steps
    src = torch.randint(low, vocab, (batch, PROMPT), generator=g)
    tgt = torch.randint(low, vocab, (batch, steps), generator=g)
    return [(s.tolist(), t.tolist()) for s, t in zip(src, tgt)], PROMPT, steps


def frozen(model):
    from trilens.capture.grad_hooks import frozen_weights

    return frozen_weights(model.hf_model)


def hf_forward(model, inputs, prompt: int, prefix: int | None = None):
    """Plain HF forward from embedding leaves -> (leaves, log-probs of each step's target, target ids)."""
    hf, embed = model.hf_model, model.hf_model.get_input_embeddings()
    if model.family == "decoder":
        ids = inputs if prefix is None else inputs[:, :prefix]
        leaf = embed(ids).detach().requires_grad_()
        logits = hf(inputs_embeds=leaf).logits
        return [leaf], logits[:, prompt - 1:].float().log_softmax(-1), inputs[:, prompt:]
    batch = model.encode(inputs)
    dec = batch.decoder_input_ids if prefix is None else batch.decoder_input_ids[:, :prefix]
    src, tgt = embed(batch.input_ids).detach().requires_grad_(), embed(dec).detach().requires_grad_()
    logits = hf(inputs_embeds=src, attention_mask=batch.attention_mask, decoder_inputs_embeds=tgt).logits
    return [src, tgt], logits.float().log_softmax(-1), batch.labels


CHUNKS: list[int] = []  # the steps per backward pass of trilens's last run


def by_trilens(model, inputs, prompt: int, steps: int, step_batch=None):
    from trilens import StepScores

    res = model.gradients(inputs, StepScores(start=prompt if model.family == "decoder" else None), step_batch=step_batch)
    CHUNKS[:] = res.info["step_chunks"][0]
    return [res.grad("embed", stack=s) for s in model.stacks]  # [batch, step, pos, d]


def by_loop(model, inputs, prompt: int, steps: int):
    with frozen(model), torch.enable_grad():
        leaves, logp, targets = hf_forward(model, inputs, prompt)
        score = logp.gather(-1, targets[:, :steps, None])[..., 0]  # [batch, step]
        per_step = [torch.autograd.grad(score[:, t].sum(), leaves, retain_graph=t < steps - 1) for t in range(steps)]
    return [torch.stack([g[i] for g in per_step], 1) for i in range(len(leaves))]


def by_prefix(model, inputs, prompt: int, steps: int):
    per_step = []
    with frozen(model), torch.enable_grad():
        for t in range(steps):
            prefix = prompt + t if model.family == "decoder" else t + 1
            leaves, logp, targets = hf_forward(model, inputs, prompt, prefix=prefix)
            per_step.append(torch.autograd.grad(logp[:, -1].gather(-1, targets[:, t, None]).sum(), leaves))
    # positions after a step's prefix get no gradient: pad to the full input as the other methods return it
    widths = [prompt + steps] if model.family == "decoder" else [prompt, steps]
    pad = torch.nn.functional.pad
    return [torch.stack([pad(g[i], (0, 0, 0, w - g[i].shape[1])) for g in per_step], 1) for i, w in enumerate(widths)]


@contextmanager
def without(feature: str):
    """trilens with one of its speed-ups switched off: ``linearized`` activations or the ``encoder split``."""
    from trilens.capture import gradients as module

    name = {"linearized": "linearized_activations", "encoder split": "split_encoder"}[feature]
    original = getattr(module, name)
    setattr(module, name, lambda model, active=True: original(model, False))
    try:
        yield
    finally:
        setattr(module, name, original)


def ablated(model, inputs, prompt: int, steps: int, feature: str):
    with without(feature):
        return by_trilens(model, inputs, prompt, steps)


def median_times(fns: dict, rounds: int) -> tuple[dict[str, float], dict]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    results = {}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}, results


def time_forward(model, inputs, prompt):
    with frozen(model), torch.enable_grad():
        start = time.perf_counter()
        hf_forward(model, inputs, prompt)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="short targets, a 4-layer GPT-2 shape: a smoke run")
    parser.add_argument("--models", nargs="+", default=["gpt", "t5", "gpt2-small"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    args = parser.parse_args()
    lengths = (8, 16) if args.quick else (8, 32, 64)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, model in load_models(args.models, args.quick).items():
        print(f"\n## {name}: {model.architecture}, {dict(model.n_layers)} layers, d_model {model.d_model}, "
              f"vocab {model.vocab_size}; per-step gradients at the token embeddings (log p of each target token)")
        print(f"{'batch':>5} {'steps':>5} {'tokens':>6} {'chunk':>5} {'trilens s':>9} {'one-step s':>10} {'loop s':>8} "
              f"{'prefix s':>8} {'vs loop':>7} {'vs prefix':>9} {'one-step vs loop':>16} {'max |diff|':>10} {'relative':>8}")
        where = []
        for batch in args.batches:
            for wanted in lengths:
                inputs, prompt, steps = make_inputs(model, batch, wanted, seed=wanted * 10 + batch)
                by_trilens(model, inputs, prompt, min(steps, 2))  # warm-up
                fns = {"one-step": lambda: by_trilens(model, inputs, prompt, steps, step_batch=1),
                       "trilens": lambda: by_trilens(model, inputs, prompt, steps),
                       "loop": lambda: by_loop(model, inputs, prompt, steps),
                       "prefix": lambda: by_prefix(model, inputs, prompt, steps)}
                first, results = median_times(fns, 1)
                rounds = 1 if args.quick or sum(first.values()) > 30 else 3 if sum(first.values()) > 5 else 7
                t, results = median_times(fns, rounds) if rounds > 1 else (first, results)
                diff = max(float((a - b).abs().max()) for other in ("trilens", "one-step", "prefix")
                           for a, b in zip(results[other], results["loop"]))
                scale = max(float(g.abs().max()) for g in results["loop"])
                tokens = (prompt + steps) if model.family == "decoder" else f"{prompt}+{steps}"
                chunk = max(CHUNKS)  # the size trilens settled on in its last round
                print(f"{batch:>5} {steps:>5} {tokens:>6} {chunk:>5} {t['trilens']:>9.3f} {t['one-step']:>10.3f} "
                      f"{t['loop']:>8.3f} {t['prefix']:>8.3f} {t['loop'] / t['trilens']:>6.2f}x "
                      f"{t['prefix'] / t['trilens']:>8.2f}x {t['loop'] / t['one-step']:>15.2f}x {diff:>10.1e} {diff / scale:>8.1e}",
                      flush=True)
                if wanted == lengths[-1]:
                    fwd = statistics.median(time_forward(model, inputs, prompt) for _ in range(3))
                    features = ["linearized"] + (["encoder split"] if model.family == "encoder-decoder" else [])
                    off, _ = median_times({"trilens": fns["trilens"], **{
                        f: (lambda f=f: ablated(model, inputs, prompt, steps, f)) for f in features}}, min(rounds, 3))
                    where.append((batch, steps, fwd, t, off))
        print("where the time goes (longest target): the forward pass with a graph, then per step: the body's backward "
              "batched (trilens) or one at a time (one-step), and the extra cost of going through the LM head each step (loop)")
        for batch, steps, fwd, t, off in where:
            per_trilens = (t["trilens"] - fwd) / steps
            per_one = (t["one-step"] - fwd) / steps
            head = (t["loop"] - t["one-step"]) / steps
            print(f"  batch {batch}, {steps} steps: forward {fwd:.3f} s ({fwd / t['trilens']:.0%} of trilens); per step: "
                  f"body backward {per_trilens * 1e3:.1f} ms batched vs {per_one * 1e3:.1f} ms alone; LM head backward "
                  f"+{head * 1e3:.1f} ms in the loop; prefix re-run {t['prefix'] / steps * 1e3:.1f} ms; "
                  + "; ".join(f"without {f}: {off[f] / off['trilens']:.2f}x trilens's time" for f in off if f != "trilens"))


if __name__ == "__main__":
    main()
