"""Lens benchmark (issue 4): batched logit lens vs a per-layer loop; batched decoder lens vs one
``generate`` per layer; tuned-lens training throughput vs a plain forward.

    python benchmarks/lens.py [--quick]

Ratios against baselines measured in the same run, interleaved, median of several rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import torch

warnings.filterwarnings("ignore")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def median_time(fn, rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    import trilens
    from trilens.lens import LogitLens, decoder_lens, logit_lens
    from trilens.lens.decoder import encoder_memories
    from trilens.zoo import tasks as T

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rounds = 2 if args.quick else 5

    # -- logit lens: all layers batched vs a per-layer loop ---------------------------------------
    import transformers as tf

    cfg = tf.GPT2Config(n_layer=4 if args.quick else 12, n_embd=256 if args.quick else 768, n_head=4 if args.quick else 12)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = trilens.load(tf.GPT2LMHeadModel(cfg).eval())
    ids = torch.randint(0, 50257, (4, 64), generator=torch.Generator().manual_seed(1))
    lens = LogitLens.from_model(model)

    def per_layer_loop():
        # what one writes without trilens: a trace, then a Python loop over layers, one unembedding each
        cache = model.trace(ids, sites="resid")
        states = cache.accumulated_resid()
        final = cache.logits.log_softmax(-1)
        out = []
        with torch.no_grad():
            for layer in range(states.shape[0]):
                logp = lens(states[layer], layer).log_softmax(-1)
                out.append(((final.exp() * (final - logp)).sum(-1), logp.argmax(-1), -(logp.exp() * logp).sum(-1)))
        return out

    t_loop = median_time(per_layer_loop, rounds)
    t_lens = median_time(lambda: logit_lens(model, ids), rounds)
    print(f"## logit lens: GPT-2-shaped ({cfg.n_layer} layers, d_model {cfg.n_embd}, vocab 50257), 4 x 64 tokens, "
          f"median of {rounds}")
    print(f"per-layer loop (KL, top-1, entropy): {t_loop:.3f} s")
    print(f"trilens logit_lens (KL, CE, rank, entropy, top-5, agreement): {t_lens:.3f} s  ratio {t_lens / t_loop:.2f}")

    # -- tuned lens: training tokens/s vs a plain forward, and vs the textbook autograd step -----------
    from memory import peak_rss_mb, reset_peak_rss, rss_mb

    from trilens.lens import TunedLens

    texts = [torch.randint(0, 50257, (64,), generator=torch.Generator().manual_seed(i)).tolist() for i in range(64)]
    steps = 3 if args.quick else 10
    sites = model.sites(stack="decoder", layer=0, kind="resid_pre") + model.sites(stack="decoder", kind="resid_post")

    def textbook_step(lens, batch):
        """One step as the definition reads: every layer's log-softmax in one autograd graph."""
        cache = model.trace(batch, sites=sites)
        states, mask = cache.accumulated_resid("decoder"), cache.mask("decoder")
        final_logp = cache.logits.float().log_softmax(-1)[mask]
        kls = [(final_logp.exp() * (final_logp - lens(states[l], l).float().log_softmax(-1)[mask])).sum(-1).mean()
               for l in range(len(lens.translators))]
        lens.zero_grad()
        torch.stack(kls).mean().backward()

    def train_measured(fn):
        base = rss_mb()
        reset_peak_rss()
        start = time.perf_counter()
        fn()
        return steps * 8 * 64 / (time.perf_counter() - start), peak_rss_mb() - base

    text_lens = TunedLens.from_model(model)
    text_tps, text_mem = train_measured(lambda: [textbook_step(text_lens, texts[8 * i % 64: 8 * i % 64 + 8]) for i in range(steps)])
    fit_tps, fit_mem = train_measured(lambda: TunedLens.from_model(model).fit(model, texts, steps=steps, batch_size=8, progress=False))
    batch = torch.tensor(texts[:8])
    plain_tps = 8 * 64 / median_time(lambda: model.hf_model(batch), rounds)
    print(f"\n## tuned lens training: {steps} steps of 8 x 64 tokens on the same model")
    print(f"plain forward {plain_tps:.0f} tok/s")
    print(f"textbook step (autograd through every layer's log-softmax): {text_tps:.0f} tok/s, "
          f"ratio {text_tps / plain_tps:.3f}, peak memory +{text_mem:.0f} MB")
    print(f"trilens TunedLens.fit: {fit_tps:.0f} tok/s, ratio {fit_tps / plain_tps:.3f}, peak memory +{fit_mem:.0f} MB  "
          f"({fit_tps / text_tps:.2f}x the textbook step, memory x{fit_mem / text_mem:.2f})")

    # -- decoder lens: one batched run vs one generate per layer ----------------------------------
    try:
        t5 = trilens.load("zoo:t5")
    except trilens.TrilensError as err:
        print(f"\n## decoder lens: skipped ({err})")
        return
    exs = T.logic(8, depths=(1, 2, 3), split="test", seed=5) + T.reverse(8, split="test", seed=5)
    sources = [f"{e.text} {'=' if e.task == 'logic' else '>'}" for e in exs]
    refs = [e.target for e in exs]
    from transformers.modeling_outputs import BaseModelOutput

    def one_generate_per_layer():
        mem, mask = encoder_memories(t5, sources)
        outs = []
        for k in range(mem.shape[0]):
            seq = t5.hf_model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=mem[k]),
                                       attention_mask=mask.long(), max_new_tokens=26, do_sample=False)
            outs.append(t5.tokenizer.batch_decode(seq, skip_special_tokens=True))
        return outs

    batched = decoder_lens(t5, sources, references=refs, max_new_tokens=26, batch_size=len(sources))
    same = batched.outputs == one_generate_per_layer()
    t_per = median_time(one_generate_per_layer, rounds)
    t_bat = median_time(lambda: decoder_lens(t5, sources, references=refs, max_new_tokens=26, batch_size=len(sources)), rounds)
    print(f"\n## decoder lens on zoo:t5: {len(sources)} sources (logic + reverse), {t5.n_layers['encoder'] + 1} encoder layers, "
          f"up to 26 new tokens, median of {rounds}")
    print(f"one generate per layer: {t_per:.3f} s")
    print(f"batched over all layers: {t_bat:.3f} s  speed-up {t_per / t_bat:.2f}x  identical outputs: {same}")
    print("target: >= 3x faster with identical outputs")


if __name__ == "__main__":
    sys.exit(main())
