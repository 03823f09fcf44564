"""What each analysis costs at real model sizes (issue 26): random weights at real shapes, on this machine.

    python benchmarks/scale.py [--models gpt2-small t5-base pythia-410m llama-1b] [--batch 2] [--length 40]
                               [--only NAME ...] [--split]

Per model, a batch of random token ids (encoder-decoders: sources of --length and targets of half that), and per
analysis its wall time as a multiple of one plain HF forward of the same batch (forward + backward for the analyses
that take gradients), and its peak memory above the resident set before it, as a multiple of the weights' size.
Each number is one run (the baseline the best of three); run it alone on the machine.

  trace             every residual stream (``model.trace(..., sites="resid")``)
  logit lens        ``logit_lens`` at every layer and position
  tuned lens step   one training step of ``TunedLens.fit`` (batch as above)
  gradients         ``model.gradients`` of every target step's log-probability (32 steps) at every resid_post
  saliency, IG 16   ``attribute`` (32 steps)
  attention steps   ``attention_steps`` with sensitivity="estimate" (8 probes), 8 generated steps
  relevancy         ``relevancy_maps``, 4 generated steps
  patching sweep    ``patching_sweep`` over resid_pre at every layer and position of one 16-token pair
  shortcut fit      ``LinearShortcut.fit`` from the middle layer over the batch (decoder-only)
  GRADIEND pair     ``GradientReader.pair``: the factual and the counterfactual weight gradient at the class slot
                    over every base-model parameter, flattened to float32 (what GRADIEND trains on; one batch)

``--only`` keeps the analyses whose names start with one of its words. ``--split`` adds, per model, the same model
saved and loaded again with accelerate's ``device_map="auto"`` over half its weights' size of CPU memory, the rest
offloaded to disk: forward, trace, gradients and the logit lens, whole against split, with the time as a multiple of
the whole model's and the peak memory of each device (CPU: the resident set's peak above the loaded model; disk: the
offload folder, read again on every forward).
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

STEPS = 32
WORDS = 2000  # the benchmark tokenizer's words w3..w1999 are ids 3..1999 (0-2: pad, unknown, end)


def word_tokenizer():
    """A word-level tokenizer over ids 0..WORDS-1 (the random models have none; GRADIEND's rows are texts)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[EOS]": 2, **{f"w{i}": i for i in range(3, WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]")


def gradiend_pair(model, batch: int, length: int):
    """One GRADIEND batch: ``batch`` rows of ``length`` words, their factual and counterfactual gradients."""
    from trilens.features import FeatureRow
    from trilens.features.gradients import GradientReader
    from trilens.features.params import select_parameters

    g = torch.Generator().manual_seed(1)
    words = torch.randint(3, WORDS, (batch, length), generator=g).tolist()
    rows = [FeatureRow(" ".join(f"w{i}" for i in r), factual=5, counterfactual=6, label="a") for r in words]
    return lambda: GradientReader(model, select_parameters(model)).pair(rows)


def build(name: str):
    """(HF model, dtype) at the shape of ``name``, random weights, eager attention."""
    import transformers as tf

    shapes = {
        "gpt2-small": (tf.GPT2Config(), tf.GPT2LMHeadModel, torch.float32),
        "pythia-410m": (tf.GPTNeoXConfig(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16,
                                         intermediate_size=4096, vocab_size=50304), tf.GPTNeoXForCausalLM, torch.float32),
        "t5-base": (tf.T5Config(d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12, vocab_size=32128,
                                decoder_start_token_id=0), tf.T5ForConditionalGeneration, torch.float32),
        "llama-1b": (tf.LlamaConfig(num_hidden_layers=16, hidden_size=2048, intermediate_size=8192,
                                    num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                                    tie_word_embeddings=True), tf.LlamaForCausalLM, torch.bfloat16),
    }
    config, cls, dtype = shapes[name]
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    return cls(config).to(dtype).eval(), dtype


def _release_freed_memory() -> None:
    """Hand freed heap back to the system, so that an analysis's peak is not hidden in memory an earlier one freed."""
    import ctypes
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def measure(fn, repeats: int = 1) -> tuple[float, float]:
    """(best seconds, peak MB above the resident set before)."""
    best, peak = float("inf"), 0.0
    for _ in range(repeats):
        _release_freed_memory()
        reset_peak_rss()
        before = rss_mb()
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
        peak = max(peak, peak_rss_mb() - before)
    return best, peak


def split_table(name: str, whole, inputs, t_fwd: float, weights_mb: float) -> None:
    """The model placed over CPU and disk against the model whole: forward, trace, gradients, logit lens."""
    import tempfile
    from pathlib import Path

    import trilens
    from trilens import StepScores
    from trilens.lens import logit_lens

    with tempfile.TemporaryDirectory() as tmp:
        fresh, _ = build(name)  # the same weights (seeded), without the bridge's views into them
        fresh.save_pretrained(Path(tmp, "model"))
        del fresh
        whole.tokenizer.save_pretrained(Path(tmp, "model"))
        split = trilens.load(Path(tmp, "model"), device_map="auto", max_memory={"cpu": int(weights_mb / 2 * 2**20)},
                             offload_folder=str(Path(tmp, "offload")))
        sizes = {}
        for p in {id(p): p for p in split.hf_model.parameters()}.values():  # each parameter once (tied ones too)
            sizes[p.device.type] = sizes.get(p.device.type, 0) + p.numel() * p.element_size() / 2**20
        on_disk = sizes.get("meta", 0.0)  # read from the checkpoint's safetensors by accelerate when its layer runs
        placement = split.placement()
        layers = sum(1 for d in placement.values() if d == "disk")
        print(f"### {name} split by accelerate: {sizes.get('cpu', 0):.0f} MB of weights in CPU memory, {on_disk:.0f} MB "
              f"on disk ({layers} of {len(placement)} parts)")
        print(f"{'analysis':<28}{'whole s':>9}{'split s':>9}{'x whole':>9}{'whole MB':>10}{'split MB':>10}"
              f"{'disk MB':>9}")

        def forward(m):
            return lambda: m.run(inputs)

        for what, fn in {"forward": forward,
                         "trace (all residuals)": lambda m: lambda: m.trace(inputs, sites="resid"),
                         f"gradients ({STEPS} steps)": lambda m: lambda: m.gradients(inputs, StepScores(),
                                                                                  sites="resid_post", embeddings=False),
                         "logit lens": lambda m: lambda: logit_lens(m, inputs)}.items():
            try:
                (tw, mw), (ts, ms) = measure(fn(whole)), measure(fn(split))
            except Exception as err:  # noqa: BLE001 - one line per analysis that cannot run split
                print(f"{what:<28}  {type(err).__name__}: {str(err).splitlines()[0][:80]}")
                continue
            print(f"{what:<28}{tw:>9.2f}{ts:>9.2f}{ts / tw:>8.1f}x{mw:>+10.0f}{ms:>+10.0f}{on_disk:>9.0f}")
        print()
        del split


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["gpt2-small", "t5-base", "pythia-410m", "llama-1b"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=40)
    parser.add_argument("--only", nargs="+", default=None, help="analyses whose names start with one of these")
    parser.add_argument("--split", action="store_true", help="also whole against split over CPU and disk")
    args = parser.parse_args()
    import trilens
    from trilens import StepScores
    from trilens.attention import attention_steps, relevancy_maps
    from trilens.attribution import attribute
    from trilens.lens import LinearShortcut, TunedLens, logit_lens
    from trilens.patching import patching_sweep

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {args.batch} x {args.length} tokens\n")
    for name in args.models:
        hf, dtype = build(name)
        model = trilens.load(hf, tokenizer=word_tokenizer())
        weights_mb = sum(p.numel() * p.element_size() for p in hf.parameters()) / 2**20
        vocab = hf.config.vocab_size
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(100, vocab, (args.batch, args.length), generator=g)
        if model.family == "encoder-decoder":
            targets = torch.randint(100, vocab, (args.batch, STEPS), generator=g)
            inputs = [(s.tolist(), t.tolist()) for s, t in zip(ids, targets)]
            forward_kwargs = {"input_ids": ids, "decoder_input_ids": targets}
            sources = [s.tolist() for s in ids]
        else:
            inputs = [r.tolist() for r in ids]  # the last STEPS tokens are the scored steps
            forward_kwargs = {"input_ids": ids}
            sources = [r[: args.length - 8].tolist() for r in ids]

        def forward():
            with torch.inference_mode():
                hf(**forward_kwargs)

        def forward_backward():
            out = hf(**forward_kwargs).logits.float().log_softmax(-1)[..., 0].sum()
            out.backward()
            hf.zero_grad(set_to_none=True)

        t_fwd, m_fwd = measure(forward, repeats=3)
        t_fb, m_fb = measure(forward_backward, repeats=2)
        half = model.n_layers[model.stacks[-1]] // 2
        pair = ([inputs[0][:16]] if model.family != "encoder-decoder" else [(inputs[0][0][:16], inputs[0][1][:8])])
        corrupt = ([inputs[1][:16]] if model.family != "encoder-decoder" else [(inputs[1][0][:16], inputs[0][1][:8])])
        lens = TunedLens.from_model(model)
        # attribution's (inputs, targets): the pairs of an encoder-decoder, else the prompts and their last STEPS tokens
        attributed = (inputs, None) if model.family == "encoder-decoder" else (sources, [r[-STEPS:] for r in inputs])
        analyses = {
            "trace (all residuals)": (lambda: model.trace(inputs, sites="resid"), t_fwd),
            "logit lens": (lambda: logit_lens(model, inputs), t_fwd),
            "tuned lens step": (lambda: lens.fit(model, inputs, steps=1, batch_size=args.batch, progress=False), t_fb),
            f"gradients ({STEPS} steps)": (lambda: model.gradients(inputs, StepScores(), sites="resid_post",
                                                                    embeddings=False), t_fb),
            "saliency": (lambda: attribute(model, *attributed, method="saliency"), t_fb),
            "IG, 16 points": (lambda: attribute(model, *attributed, method="ig", n_steps=16), t_fb),
            "attention steps (8 gen.)": (lambda: attention_steps(model, sources, max_new_tokens=8, sensitivity="estimate",
                                                                 probes=8), t_fwd),
            "relevancy (4 gen.)": (lambda: relevancy_maps(model, sources, max_new_tokens=4), t_fb),
            "patching sweep (16 tok.)": (lambda: patching_sweep(model, pair, corrupt, "kl", sites="resid_pre",
                                                                progress=False), t_fwd),
        }
        if model.family == "decoder":
            analyses["shortcut fit (mid layer)"] = (lambda: LinearShortcut.fit(model, inputs, layer=half, progress=False),
                                                    t_fb)
        analyses["GRADIEND pair (all weights)"] = (gradiend_pair(model, args.batch, args.length), t_fb)
        if args.only:
            analyses = {k: v for k, v in analyses.items() if any(k.lower().startswith(w.lower()) for w in args.only)}
        print(f"## {name} ({sum(p.numel() for p in hf.parameters()) / 1e6:.0f} M parameters, {str(dtype)[6:]}, weights "
              f"{weights_mb:.0f} MB): forward {t_fwd:.2f} s (+{m_fwd:.0f} MB), forward + backward {t_fb:.2f} s "
              f"(+{m_fb:.0f} MB)")
        print(f"{'analysis':<28}{'seconds':>9}{'x baseline':>12}{'baseline':>10}{'peak MB':>9}{'x weights':>11}")
        for what, (fn, base) in analyses.items():
            try:
                t, m = measure(fn)
            except Exception as err:  # noqa: BLE001 - one line per analysis that cannot run at this size
                print(f"{what:<28}  {type(err).__name__}: {str(err).splitlines()[0][:80]}")
                continue
            print(f"{what:<28}{t:>9.2f}{t / base:>11.1f}x{'fwd' if base is t_fwd else 'fwd+bwd':>10}{m:>+9.0f}"
                  f"{m / weights_mb:>10.2f}x")
        print()
        if args.split:
            split_table(name, model, inputs, t_fwd, weights_mb)
        del model, hf


if __name__ == "__main__":
    main()
