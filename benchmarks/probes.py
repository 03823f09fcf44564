"""Probe benchmark (issue 5): the batched all-layer trainer vs scikit-learn looped over layers, and
peak memory when probing from an activation store 4x larger.

    python benchmarks/probes.py [--part speed|store|all] [--quick]

Speed: 13 layers x 20,000 examples x 768 dims, 4 classes, the same 80/20 split for both; scikit-learn
gets the same standardised features (``StandardScaler`` + ``LogisticRegression``). Two kinds of features:
``planted`` (independent features, a label planted with a different strength in every layer; each
solver at its defaults) and ``ill-conditioned`` (correlated features and a weak signal, like real
residual streams; both solvers run to convergence, max_iter=2000). Ratios are against the
scikit-learn loop measured in the same run.
Memory: a fresh process per run; each captures a corpus into a store (not measured), then probes
every layer from the store, with the pooled features in memory and kept on disk (``on_disk=True``:
the probe trains on them in chunks); peak RSS of the probing is compared between 1x and 4x the texts.
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

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from memory import peak_rss_mb  # noqa: E402

warnings.filterwarnings("ignore")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def planted(layers: int, n: int, d: int, classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent features, a class mean added with a strength growing with depth: solved in 3-20 iterations."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    means = torch.randn(classes, d, generator=g) / d ** 0.5
    strength = torch.linspace(0.0, 12.0, layers)  # layer 0: nothing; deeper: more separable
    x = torch.randn(layers, n, d, generator=g)
    x += strength[:, None, None] * means[y][None]
    return x, y


def ill_conditioned(layers: int, n: int, d: int, classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """As in real residual streams: correlated features (a rotated spectrum spanning 100x, which per-feature
    scaling cannot undo), offsets far from zero (a few "rogue" features with a mean 1,000x their spread) and a
    weak, noisy signal: each layer needs 150-190 iterations."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    basis = torch.linalg.qr(torch.randn(d, d, generator=g))[0]
    means = torch.randn(classes, d, generator=g) / d ** 0.5
    x = (torch.randn(layers, n, d, generator=g) * torch.logspace(1, -1, d)) @ basis.T
    x += torch.linspace(0.0, 0.15, layers)[:, None, None] * means[y][None]
    offset = torch.randn(d, generator=g) * 3
    offset[:4] = 1000 * x[:, :, :4].std((0, 1))
    return x + offset, y


SCENARIOS = {  # name -> (features, max_iter for both solvers: their defaults, or enough to converge)
    "planted": (planted, None),
    "ill-conditioned": (ill_conditioned, 2000),
}


def bench_speed(layers: int, n: int, d: int, classes: int, scenario: str) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from trilens.probes.batched import fit_layers

    make, max_iter = SCENARIOS[scenario]
    x, y = make(layers, n, d, classes)
    sk_kw, our_kw = ({}, {}) if max_iter is None else ({"max_iter": max_iter}, {"max_iter": max_iter})
    fit_layers(x[:1, :100, :8], y[:100], classes)  # warm-up (first calls into torch's kernels)
    split = int(0.8 * n)
    tr, te = slice(0, split), slice(split, n)
    start = time.perf_counter()
    acc_sk, iters_sk = [], []
    for k in range(layers):
        sc = StandardScaler().fit(x[k, tr].numpy())
        clf = LogisticRegression(**sk_kw).fit(sc.transform(x[k, tr].numpy()), y[tr].numpy())
        acc_sk.append(clf.score(sc.transform(x[k, te].numpy()), y[te].numpy()))
        iters_sk.append(int(clf.n_iter_[0]))
    t_sk = time.perf_counter() - start
    start = time.perf_counter()
    fitted = fit_layers(x[:, tr], y[tr], classes, **our_kw)
    acc_b = (fitted.predict(x[:, te]) == y[te]).float().mean(1).tolist()
    t_b = time.perf_counter() - start
    budget = "each solver's default max_iter" if max_iter is None else f"max_iter={max_iter} for both"
    print(f"speed, {scenario} features: {layers} layers x {n} examples x {d} dims, {classes} classes, 80/20 split, "
          f"{torch.get_num_threads()} threads, {budget}")
    print(f"{'method':<44}{'seconds':>9}{'speed-up':>10}")
    print(f"{'sklearn LogisticRegression x layers (baseline)':<44}{t_sk:>9.1f}{1.0:>10.2f}")
    print(f"{'trilens fit_layers (all layers)':<44}{t_b:>9.1f}{t_sk / t_b:>10.2f}")
    diff = [abs(a - b) for a, b in zip(acc_b, acc_sk)]
    print("accuracy per layer (sklearn / batched): " + ", ".join(f"{a:.3f}/{b:.3f}" for a, b in zip(acc_sk, acc_b)))
    print(f"largest accuracy difference: {max(diff) * 100:.2f} points (target <= 1)")
    print(f"iterations per layer: sklearn {iters_sk} (sum {sum(iters_sk)}), trilens {fitted.n_iter.tolist()} "
          f"(sum {int(fitted.n_iter.sum())}; each reads the features twice); trilens converged: "
          f"{int(fitted.converged.sum())}/{layers} layers")
    print()


def store_worker(store: str, n_texts: int, on_disk: bool) -> None:
    """Fresh process: probe every layer of a store (sentence level, mean pooling); print peak RSS."""
    from trilens.capture.store import ActivationStore
    from trilens.probes import probe_layers

    labels = [i % 4 for i in range(n_texts)]
    start = time.perf_counter()
    res = probe_layers(ActivationStore(store), labels=labels, cv=2, control=False, on_disk=on_disk, progress=False)
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb(), "n": res.info["n"]}))


def bench_model_and_texts(n_texts: int, seq: int):
    import transformers as T

    import trilens

    cfg = T.GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=2000)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = trilens.load(T.GPT2LMHeadModel(cfg).eval())
    g = torch.Generator().manual_seed(1)
    return model, [torch.randint(0, 2000, (seq,), generator=g).tolist() for _ in range(n_texts)]


def memory_worker(n_texts: int, seq: int) -> None:
    """Fresh process: the in-memory run (the model's activations of every text held, then probed)."""
    from trilens.probes import probe_layers

    model, texts = bench_model_and_texts(n_texts, seq)
    start = time.perf_counter()
    probe_layers(model, texts, [i % 4 for i in range(n_texts)], cv=2, control=False, batch_size=16, progress=False)
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}))


def capture(store: str, n_texts: int, seq: int) -> int:
    from trilens.capture.dataset import capture_dataset

    model, texts = bench_model_and_texts(n_texts, seq)
    capture_dataset(model, texts, ["resid"], store, batch_size=16, texts_per_shard=64, dtype="float16", progress=False)
    return sum(os.path.getsize(os.path.join(store, f)) for f in os.listdir(store))


def bench_store(n_texts: int, seq: int) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for factor in (1, 4):
            store = os.path.join(tmp, f"store{factor}")
            size = capture(store, n_texts * factor, seq)
            for on_disk in (False, True):
                out = subprocess.run([sys.executable, __file__, "--worker", store, str(n_texts * factor), str(int(on_disk))],
                                     capture_output=True, text=True, check=True)
                rows.append((f"{factor}x" + (" disk" if on_disk else ""), factor, size,
                             json.loads(out.stdout.strip().splitlines()[-1])))
        out = subprocess.run([sys.executable, __file__, "--memory-worker", str(n_texts), str(seq)], capture_output=True,
                             text=True, check=True)
        mem = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"store: 12-layer d768 GPT-2 shape, {seq} tokens per text, resid sites (13 layers), fp16 on disk; "
          "sentence-level mean pooling, 2 folds, all layers")
    print(f"{'corpus':<8}{'texts':>7}{'store MB':>10}{'probe s':>9}{'peak RSS MB':>13}")
    for name, factor, size, r in rows:
        print(f"{name:<8}{n_texts * factor:>7}{size / 2**20:>10.0f}{r['seconds']:>9.1f}{r['peak_rss_mb']:>13.0f}")
    print(f"{'memory':<8}{n_texts:>7}{'-':>10}{mem['seconds']:>9.1f}{mem['peak_rss_mb']:>13.0f}   (in-memory run: model forward + probe)")
    peak = {name: r["peak_rss_mb"] for name, _, _, r in rows}
    print(f"peak RSS store 4x / in-memory 1x: {peak['4x'] / mem['peak_rss_mb']:.2f}; store 4x / store 1x: "
          f"{peak['4x'] / peak['1x']:.2f}, features on disk: {peak['4x disk'] / peak['1x disk']:.2f} (target: flat, ~1.0); "
          f"store size 4x / 1x: {rows[2][2] / rows[0][2]:.2f}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        store_worker(sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1")
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--memory-worker":
        memory_worker(int(sys.argv[2]), int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=["speed", "store", "all"], default="all")
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all", help="speed: which features")
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the script runs")
    args = parser.parse_args()
    if args.part in ("speed", "all"):
        for scenario in SCENARIOS if args.scenario == "all" else [args.scenario]:
            bench_speed(*((13, 2000, 64, 4) if args.quick else (13, 20000, 768, 4)), scenario)
    if args.part in ("store", "all"):
        bench_store(*((64, 16) if args.quick else (256, 64)))


if __name__ == "__main__":
    main()
