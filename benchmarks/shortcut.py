"""Linear shortcut benchmark (issue 25): fitting W, and what the shortcut costs to use.

    python benchmarks/shortcut.py [--quick]

GPT-2-small shape (12 layers, d_model 768, random weights), 25 prompts of 16 random tokens, the shortcut from layer 6
to layer 12. W is the mean over the prompts of the Jacobian of the last block's output at the last token with respect
to layer 6's residual stream there (every other position held), computed three ways:

  trilens        ``LinearShortcut.fit``: forward mode (``torch.func.jvp`` under ``vmap``), every prompt and a chunk of
                 input directions in one forward pass, of the last token only (the earlier tokens' keys and values
                 from a KV cache: nothing before the last token depends on it)
  loop           what a user writes today: one ``torch.autograd.functional.jacobian`` per prompt of a function that
                 runs the whole forward with a hook putting x in place (reverse mode, one backward pass per output
                 coordinate)
  loop, vmap     the same with ``vectorize=True`` (its backward passes batched by vmap), per prompt

All three Ws must agree to 1e-5. Then the shortcut's use: the model run up to layer 6, ``z = βWh + b`` and the head,
against one full forward of the same batch (``model.run``). Times are the best of a few runs, ratios measured in the
same process; peak memory is the process's high-water mark over the resident set before the method.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import torch

warnings.filterwarnings("ignore")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, os.path.dirname(__file__))

from memory import peak_rss_mb, reset_peak_rss, rss_mb  # noqa: E402

N_PROMPTS, LENGTH = 25, 16


def measured(fn, repeats: int = 1):
    """(result, best seconds, peak MB above the resident set before)."""
    best, out, peak = float("inf"), None, 0.0
    for _ in range(repeats):
        reset_peak_rss()
        before = rss_mb()
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
        peak = max(peak, peak_rss_mb() - before)
    return out, best, peak


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a 4-layer d_model 256 model (for a smoke run)")
    args = parser.parse_args()
    import transformers as tf

    import trilens
    from trilens.lens import LinearShortcut
    from trilens.lens.shortcut import slot_site

    cfg = tf.GPT2Config(n_layer=4 if args.quick else 12, n_embd=256 if args.quick else 768, n_head=4 if args.quick else 12)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = trilens.load(tf.GPT2LMHeadModel(cfg).eval())
    layer, n_layers = cfg.n_layer // 2, cfg.n_layer
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(100, cfg.vocab_size, (N_PROMPTS, LENGTH), generator=g).tolist()
    print(f"GPT-2 shape: {n_layers} layers, d_model {cfg.n_embd}, {N_PROMPTS} prompts x {LENGTH} tokens, shortcut "
          f"{layer} -> {n_layers}; torch threads {torch.get_num_threads()}\n")

    sc, t_fit, m_fit = measured(lambda: LinearShortcut.fit(model, prompts, layer=layer, beta=1.0, progress=False))
    source, target = slot_site(model, layer), slot_site(model, n_layers)

    def user_function(prompt: list[int]):
        """What a user writes: the whole forward with a hook that puts x at the last token of layer 6's output and
        one that keeps the last block's output there."""
        ids = torch.tensor([prompt])
        kept = {}

        def put(x):
            def hook(act, hook=None):
                act = act.clone()
                act[0, -1] = x
                return act
            return hook

        def keep(act, hook=None):
            kept["y"] = act[0, -1]

        def f(x):
            with model.hooks([(source, put(x)), (target, keep)]):
                model.hf_model(input_ids=ids)
            return kept["y"]

        with torch.no_grad(), model.hooks([(source, lambda act, hook=None: kept.update(x=act[0, -1].clone()))]):
            model.hf_model(input_ids=ids)
        return f, kept["x"]

    def loop(vectorize: bool) -> torch.Tensor:
        total = torch.zeros(cfg.n_embd, cfg.n_embd)
        for prompt in prompts:
            f, x0 = user_function(prompt)
            total += torch.autograd.functional.jacobian(f, x0, vectorize=vectorize)
        return total / len(prompts)

    def floor() -> None:
        """The least any exact method computes: d directional derivatives, each at least one forward pass of one token
        through the skipped blocks (attention over that token alone: a little less than with its 15 predecessors)."""
        blocks = model.hf_model.transformer.h[layer:]
        chunk = max(1, 2**18 // (N_PROMPTS * cfg.n_embd)) * N_PROMPTS  # the rows trilens runs per pass
        with torch.inference_mode():
            for start in range(0, cfg.n_embd * N_PROMPTS, chunk):
                h = torch.randn(min(chunk, cfg.n_embd * N_PROMPTS - start), 1, cfg.n_embd)
                for block in blocks:
                    out = block(h)
                    h = out[0] if isinstance(out, tuple) else out

    _, t_floor, _ = measured(floor, repeats=2)
    W_loop, t_loop, m_loop = measured(lambda: loop(False))
    W_vec, t_vec, m_vec = measured(lambda: loop(True))
    diff = max(float((sc.W - W_loop).abs().max()), float((sc.W - W_vec).abs().max()))
    rows = [("trilens (forward mode, batched)", t_fit, m_fit, 1.0), ("loop of autograd.functional.jacobian", t_loop, m_loop, t_loop / t_fit),
            ("loop, vectorize=True", t_vec, m_vec, t_vec / t_fit)]
    print("fitting W over 25 prompts:")
    print(f"{'method':<40} {'seconds':>8} {'peak MB':>8} {'trilens is':>11}")
    for name, t, m, ratio in rows:
        print(f"{name:<40} {t:>8.2f} {m:>+8.0f} {ratio:>10.1f}x")
    print(f"max |W_trilens - W_loop| = {diff:.2e} (|W| max {float(sc.W.abs().max()):.2f})")
    print(f"floor: {cfg.n_embd} x {N_PROMPTS} one-token forward passes through blocks {layer}..{n_layers - 1} (no "
          f"derivative): {t_floor:.2f} s; trilens takes {t_fit / t_floor:.2f}x that\n")

    _, t_full, m_full = measured(lambda: model.run(prompts), repeats=5)
    _, t_short, m_short = measured(lambda: sc.logits(model, prompts), repeats=5)
    hf = model.hf_model
    ids = torch.tensor(prompts)

    def hf_forward():
        with torch.inference_mode():
            return hf(input_ids=ids).logits

    _, t_hf, _ = measured(hf_forward, repeats=5)
    print("using the shortcut (25 prompts), best of 5:")
    print(f"{'full forward (model.run)':<40} {t_full:>8.3f} s {m_full:>+6.0f} MB")
    print(f"{'plain HF forward':<40} {t_hf:>8.3f} s")
    print(f"{'shortcut from layer ' + str(layer):<40} {t_short:>8.3f} s {m_short:>+6.0f} MB   "
          f"= {t_short / t_full:.2f} of the full forward (blocks run: {layer} of {n_layers})")


if __name__ == "__main__":
    main()
