"""Attribution benchmark (issue 15): trilens's ``attribute`` against Inseq 0.7.1 on the same local models, the same
teacher-forced targets and the same method, batches of 8 inputs.

    python benchmarks/attribution.py [--quick] [--models gpt t5 gpt2-small] [--lengths 8 32 128]
                                     [--methods saliency integrated_gradients] [--ig-steps 16]

Inputs: 8 items, a 16-token source (decoder-only: the prompt) and a target of 8 / 32 / 128 tokens of random words (ids
that the tokenizer gives back unchanged, so both tools see the same tokens). zoo:gpt's context is 64 tokens, so it
runs targets of 8 and 32 only. The GPT-2-small shape (12 layers, d 768, 12 heads, vocabulary 50,257) is random, with
zoo:gpt's tokenizer.

  trilens  ``attribute(model, prompts, targets, method=...)``: per batch, one forward pass per block of captum's rows
           and the steps' backward passes batched (saliency: one forward + T batched backward rows; integrated
           gradients: one forward per chunk of interpolation points)
  Inseq    ``inseq.load_model(dir, method).attribute(..., generated_texts=targets)`` in its own virtual environment
           (benchmarks/inseq_env.py, never a trilens dependency); one forward and backward per step on the growing
           prefix, one input at a time for decoder-only targets (Inseq's own rule). Its attributed function is the
           target's log-probability, saliency keeps the sign (abs=False), integrated gradients start from zero
           embeddings: the same quantities trilens computes (benchmarks/inseq_runner.py).

Each tool runs in a fresh worker process (model load excluded; one untimed warm-up call on one item first) and
reports the wall time of the attribute call and its peak resident memory (VmHWM, reset before the call). Agreement:
saliency, the largest absolute difference over every step and every source and prefix embedding coordinate;
integrated gradients, Pearson's r per step over the same coordinates (the smallest over steps and items).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SOURCE, ITEMS, BATCH = 16, 8, 8


def model_dir(name: str, quick: bool, root: Path) -> Path:
    """A local model folder with its tokenizer: the zoo's, or a random GPT-2-small-shaped model saved once."""
    from trilens.zoo import zoo_path

    if name != "gpt2-small":
        return zoo_path(name)
    import transformers as tf

    out = root / ("gpt2-small-quick" if quick else "gpt2-small")
    if not (out / "config.json").exists():
        tok = tf.AutoTokenizer.from_pretrained(zoo_path("gpt"))
        tok.model_max_length = 1024  # the zoo's tokenizer says 128 (its models' context); Inseq would cut there
        cfg = tf.GPT2Config(n_layer=2 if quick else 12, n_embd=128 if quick else 768, n_head=2 if quick else 12,
                            vocab_size=50257, n_positions=1024, bos_token_id=tok.bos_token_id,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        torch.manual_seed(0)
        tf.GPT2LMHeadModel(cfg).save_pretrained(out)
        tok.save_pretrained(out)
    return out


def items(folder: Path, length: int, seed: int) -> list[dict]:
    """``ITEMS`` (source, target) id lists of plain words that the tokenizer gives back unchanged."""
    import transformers as tf

    tok = tf.AutoTokenizer.from_pretrained(folder)
    special = set(tok.all_special_ids)
    words = [i for t, i in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
             if i not in special and t.isalpha() and tok(t, add_special_tokens=False)["input_ids"] == [i]]
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(ITEMS):
        ids = [words[int(j)] for j in torch.randint(len(words), (SOURCE + length,), generator=g)]
        out.append({"source": ids[:SOURCE], "target": ids[SOURCE:]})
    return out


def trilens_worker(args: argparse.Namespace) -> None:
    """One timed ``attribute`` call (after a warm-up on one item); attributions in Inseq's layout, with a sidecar."""
    from memory import peak_rss_mb, reset_peak_rss
    from safetensors.torch import save_file

    import trilens
    from trilens.attribution import attribute

    torch.set_num_threads(args.threads)
    model = trilens.load(str(args.model))
    data = json.loads(args.inputs.read_text())
    if model.family == "decoder":
        inputs, targets = [d["source"] for d in data], [d["target"] for d in data]
    else:
        inputs, targets = [(d["source"], d["target"]) for d in data], None
    kw = {"method": args.method, "n_steps": args.ig_steps, "step_scores": (), "batch_size": BATCH}
    attribute(model, inputs[:1], None if targets is None else targets[:1], **kw)  # warm-up
    reset_peak_rss()
    start = time.perf_counter()
    result = attribute(model, inputs, targets, **kw)
    seconds = time.perf_counter() - start
    peak = peak_rss_mb()
    tensors = {}
    for i in range(len(data)):
        t = len(data[i]["target"])
        src = result.raw["source"][i, :t, :SOURCE]  # [T, S, H]
        tgt = result.raw["target"][i, :t, : t - 1 if model.family == "decoder" else t]
        if model.family == "decoder":  # Inseq's layout: prompt + target rows, steps as columns
            tgt = torch.cat([src, tgt], 1)
        tensors[f"source_{i}"] = src.transpose(0, 1).contiguous()
        tensors[f"target_{i}"] = tgt.transpose(0, 1).contiguous()
    save_file(tensors, str(args.out))
    args.out.with_suffix(".json").write_text(json.dumps({"wall_s": seconds, "peak_rss_attribute_mb": peak,
                                                         "rows_run": result.info.get("rows_run")}))


def run_worker(python: str, script: Path, args: list[str], out: Path, timeout: int) -> dict:
    cmd = [python, str(script), *args, "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(out.with_suffix(".json").read_text())


def compare(a_file: Path, b_file: Path, method: str, n: int, decoder: bool) -> tuple[float, float]:
    """Saliency: the largest absolute difference; IG: the smallest per-step Pearson r over source and prefix together
    (positions both tools fill; a decoder-only model's target already holds its prompt); and the largest absolute
    attribution (the scale of float32 rounding)."""
    from safetensors.torch import load_file

    a, b = load_file(str(a_file)), load_file(str(b_file))
    scale = max(float(t.nan_to_num().abs().max()) for t in b.values())
    worst = 0.0 if method == "saliency" else 1.0
    for i in range(n):
        parts = ["target"] if decoder else ["source", "target"]
        x = torch.cat([a[f"{p}_{i}"] for p in parts])  # [token, step, d]; Inseq adds the never-read last token
        y = torch.cat([b[f"{p}_{i}"][: a[f"{p}_{i}"].shape[0]] for p in parts])
        for t in range(x.shape[1]):
            keep = ~torch.isnan(y[:, t, 0])
            u, v = x[keep, t].flatten().double(), y[keep, t].flatten().double()
            if method == "saliency":
                worst = max(worst, float((u - v).abs().max()))
            else:
                worst = min(worst, float(torch.corrcoef(torch.stack([u, v]))[0, 1]))
    return worst, scale


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", nargs="+", default=["gpt", "t5", "gpt2-small"])
    parser.add_argument("--lengths", nargs="+", type=int, default=[8, 32, 128])
    parser.add_argument("--methods", nargs="+", default=["saliency", "integrated_gradients"])
    parser.add_argument("--ig-steps", type=int, default=16)
    parser.add_argument("--ig-max-length", type=int, default=32, help="integrated gradients on targets up to this long")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=3600)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        trilens_worker(args)
        return
    from inseq_env import ensure_inseq_env

    inseq_python = str(ensure_inseq_env())
    root = Path(tempfile.mkdtemp(prefix="trilens-attr-bench-"))
    lengths = [8] if args.quick else args.lengths
    print(f"attribution: trilens vs Inseq 0.7.1, {ITEMS} inputs (batches of {BATCH}), {SOURCE}-token sources, "
          f"integrated gradients with {args.ig_steps} points; {args.threads} threads; times of the attribute call\n")
    header = (f"{'model':<11} {'T':>4} {'method':<21} {'trilens s':>9} {'Inseq s':>9} {'speed-up':>8} "
              f"{'trilens MB':>10} {'Inseq MB':>9}  agreement")
    print(header)
    print("-" * len(header))
    for name in args.models:
        folder = model_dir(name, args.quick, root)
        for length in lengths:
            if name == "gpt" and SOURCE + length > 64:
                continue  # zoo:gpt's context
            data = items(folder, length, seed=length)
            inputs = root / f"{name}-{length}.json"
            inputs.write_text(json.dumps(data))
            for method in args.methods:
                if method == "integrated_gradients" and length > args.ig_max_length:
                    continue
                common = ["--model", str(folder), "--method", method, "--inputs", str(inputs)]
                ours = run_worker(sys.executable, Path(__file__), ["--worker", "--ig-steps", str(args.ig_steps),
                                                                  "--threads", str(args.threads), *common],
                                  root / f"trilens-{name}-{length}-{method}.safetensors", args.timeout)
                theirs = run_worker(inseq_python, HERE / "inseq_runner.py",
                                    [*common, "--ig-steps", str(args.ig_steps), "--batch-size", str(BATCH), "--warmup",
                                     "--threads", str(args.threads)],
                                    root / f"inseq-{name}-{length}-{method}.safetensors", args.timeout)
                agree, scale = compare(root / f"trilens-{name}-{length}-{method}.safetensors",
                                       root / f"inseq-{name}-{length}-{method}.safetensors", method, len(data),
                                       decoder=name != "t5")
                what = (f"max |diff| {agree:.1e} (max |attr| {scale:.3g})" if method == "saliency"
                        else f"min Pearson r {agree:.5f}")
                print(f"{name:<11} {length:>4} {method:<21} {ours['wall_s']:>9.2f} {theirs['wall_s']:>9.2f} "
                      f"{theirs['wall_s'] / ours['wall_s']:>7.1f}x {ours['peak_rss_attribute_mb']:>10.0f} "
                      f"{theirs['peak_rss_attribute_mb']:>9.0f}  {what}", flush=True)


if __name__ == "__main__":
    main()
