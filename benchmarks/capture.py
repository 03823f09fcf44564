"""Capture benchmark (issue 2): trace / TransformerLens / nnsight vs a plain HF forward, and the store.

    python benchmarks/capture.py [--part trace|store|all] [--quick]

Every figure is a ratio against a baseline measured in the same run (absolute times on a shared
machine are noise). Methods run interleaved, several rounds, median reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from memory import peak_rss_mb  # noqa: E402

warnings.filterwarnings("ignore")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def gpt2(n_layer: int, n_embd: int, n_head: int, seed: int = 0):
    import transformers as T

    cfg = T.GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    return T.GPT2LMHeadModel(cfg).eval()


def twin(model):
    """An un-bridged copy with the same weights: the baseline (the bridge rewires the model it wraps)."""
    import copy

    return copy.deepcopy(model)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_trace(rounds: int, batch: int, seq: int, layers: int, d: int) -> list[tuple[str, float, float]]:
    import trilens

    hf = gpt2(layers, d, max(1, d // 64))
    plain = twin(hf)
    model = trilens.load(hf)
    ids = torch.randint(0, 50257, (batch, seq), generator=torch.Generator().manual_seed(1))
    sites = model.site_index.resolve(["resid_post", "attn_pattern"])
    wanted = set(sites)
    methods = {
        "plain HF forward (baseline)": lambda: plain(ids),
        "trilens trace": lambda: model.trace(ids, sites=sites),
        "TransformerLens run_with_cache": lambda: model.bridge.run_with_cache(ids, names_filter=lambda n: n in wanted),
    }
    try:
        from nnsight import NNsight

        nn_model = NNsight(twin(hf))

        def nnsight_cache():
            saved = []
            with nn_model.trace(ids, output_attentions=True):
                for i in range(layers):  # nnsight needs modules in execution order
                    saved.append(nn_model.transformer.h[i].attn.output[1].save())
                    saved.append(nn_model.transformer.h[i].output.save())
            return saved

        methods["nnsight trace + save"] = nnsight_cache
    except ImportError:
        print("nnsight is not installed: its row is skipped")
    times: dict[str, list[float]] = {k: [] for k in methods}
    with torch.no_grad():
        for fn in methods.values():  # warm-up
            fn()
        for _ in range(rounds):
            for name, fn in methods.items():
                times[name].append(timed(fn))
    base = statistics.median(times["plain HF forward (baseline)"])
    return [(name, statistics.median(t), statistics.median(t) / base) for name, t in times.items()]


def corpus(n_texts: int, seq: int, seed: int = 2) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 50257, (n_texts, seq), generator=g).tolist()


def store_worker(n_texts: int, seq: int, layers: int, d: int, out: str) -> None:
    """Run in a fresh process: capture n_texts texts, then print tokens/s and peak RSS as JSON."""
    import trilens

    model = trilens.load(gpt2(layers, d, max(1, d // 64)))
    texts = corpus(n_texts, seq)
    start = time.perf_counter()
    trilens.capture_dataset(model, texts, "resid_post", out, batch_size=8, texts_per_shard=128,
                            dtype="float16", progress=False)
    seconds = time.perf_counter() - start
    rss = peak_rss_mb()
    print(json.dumps({"tokens": n_texts * seq, "seconds": seconds, "peak_rss_mb": rss}))


def plain_tokens_per_s(n_texts: int, seq: int, layers: int, d: int, head: bool = True) -> float:
    """Plain HF forward over the same batches: the full LM, or (head=False) its base model only."""
    model = gpt2(layers, d, max(1, d // 64))
    run = model if head else model.transformer
    ids = torch.tensor(corpus(n_texts, seq))
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, n_texts, 8):
            run(ids[i:i + 8])
    return n_texts * seq / (time.perf_counter() - start)


def run_worker(n_texts: int, seq: int, layers: int, d: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, __file__, "--store-worker", str(n_texts), str(seq), str(layers), str(d),
                               os.path.join(tmp, "store")], capture_output=True, text=True, check=True)
        return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=["trace", "store", "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="a small smoke version (< 1 min)")
    parser.add_argument("--store-worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.store_worker:
        n, seq, layers, d, out = args.store_worker
        store_worker(int(n), int(seq), int(layers), int(d), out)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    if args.part in ("trace", "all"):
        layers, d, rounds = (2, 128, 2) if args.quick else (12, 768, 5)
        print(f"\n## trace: GPT-2-shaped ({layers} layers, d_model {d}, random weights), batch 8 x 128 tokens, "
              f"every layer's resid_post + attention pattern, median of {rounds} interleaved rounds")
        print(f"{'method':<34}{'median s':>10}{'ratio':>8}")
        for name, sec, ratio in bench_trace(rounds, 8, 128, layers, d):
            print(f"{name:<34}{sec:>10.3f}{ratio:>8.2f}")
        print("target: trilens trace / plain forward <= 1.10")
    if args.part in ("store", "all"):
        layers, d, n1 = (2, 128, 64) if args.quick else (6, 256, 1600)
        seq = 128
        print(f"\n## store: capture_dataset, GPT-2-shaped ({layers} layers, d_model {d}, vocab 50257), every layer's "
              f"resid_post as float16, batch 8 x {seq}, shards of 128 texts; each run in a fresh process")
        base = plain_tokens_per_s(n1, seq, layers, d)
        body = plain_tokens_per_s(n1, seq, layers, d, head=False)
        one = run_worker(n1, seq, layers, d)
        four = run_worker(4 * n1, seq, layers, d)
        print(f"plain forward, same model and batches: {base:.0f} tok/s with the LM head, {body:.0f} tok/s without "
              "(capture_dataset skips the head when every site is inside a block)")
        print(f"{'corpus':<8}{'tokens':>9}{'tok/s':>9}{'vs plain':>10}{'vs plain w/o head':>19}{'peak RSS MB':>13}")
        for label, r in (("1x", one), ("4x", four)):
            tps = r["tokens"] / r["seconds"]
            print(f"{label:<8}{r['tokens']:>9}{tps:>9.0f}{tps / base:>10.2f}{tps / body:>19.2f}{r['peak_rss_mb']:>13.0f}")
        print(f"peak RSS 4x / 1x: {four['peak_rss_mb'] / one['peak_rss_mb']:.2f}  (target: flat, ~1.0); "
              "tokens/s ratio target >= 0.8")


if __name__ == "__main__":
    main()
