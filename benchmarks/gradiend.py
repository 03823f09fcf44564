"""GRADIEND benchmark (issue 16).

    python benchmarks/gradiend.py [--quick] [--steps 300] [--skip-package] [--skip-throughput]

1. trilens's ``train_gradiend`` against the ``gradiend`` package 0.2.3 (its own venv: benchmarks/gradiend_env.py) on the
   zoo:bert folder and the same rows of the zoo's names task (class A "she", class B "he"): the same number of steps,
   one seed, batch 32, lr 1e-5, weight decay 1e-2, source = the counterfactual gradient, target = factual -
   counterfactual, evaluation every ``--eval-every`` steps on the same 32 validation rows per class; then both encode
   the same held-out test rows (one gradient per text). Reported: held-out |Pearson r| and class means, the wall time
   of training (trilens: ``train_gradiend`` with the model loaded; the package: ``trainer.train()``, which loads it),
   and each worker's peak resident memory. trilens runs twice: as it is (each training batch's gradients computed
   once and reused, as the base model never changes) and with ``cache_gib=0`` (every step computes its batch's
   gradients again, as the package does).
2. Gradient extraction for a random GPT-2-small-shaped model (12 layers, d 768, vocabulary 50,257; zoo:gpt's
   tokenizer): rows/s of the (factual, counterfactual) gradient pair per batch of 32 rows at pre-pruning 100% / 10% /
   1%, and peak memory, against the plain HF way measured in the same run (``loss.backward()`` with HF's labels, twice,
   then every base parameter's ``.grad`` flattened, as the package does).

Every side runs in a fresh worker process; memory is the worker's VmHWM after a reset before the timed part.
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

warnings.filterwarnings("ignore")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

BATCH = 32


def concept(quick: bool):
    """The zoo names rows for zoo:bert; the first ``eval`` held-out rows per class validate, the rest are the test."""
    from trilens.features import FeatureData, zoo_feature_data

    data = zoo_feature_data("encoder", n_train=256 if quick else 1024, n_test=96 if quick else 192, n_neutral=0)
    per = 16 if quick else 32
    validation = {id(r) for c in data.classes for r in data.select("test", c)[:per]}
    test = [r for r in data.test if id(r) not in validation]
    train_side = FeatureData([r for r in data.rows if r.split == "train" or id(r) in validation], data.classes)
    return data, train_side, test, validation, per


def package_csv(data, validation, path: Path) -> Path:
    import pandas as pd

    rows = []
    for r in data.rows:
        split = "validation" if id(r) in validation else r.split
        rows.append({"masked": r.text, "label": r.factual, "label_class": r.label, "alternative": r.counterfactual,
                     "alternative_class": "B" if r.label == "A" else "A", "split": split})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def trilens_train_worker(args: argparse.Namespace) -> None:
    import torch
    from memory import peak_rss_mb, reset_peak_rss

    import trilens
    from trilens.features import train_gradiend

    torch.set_num_threads(args.threads)
    _, train_side, test, _, per = concept(args.quick)
    model = trilens.load("zoo:bert")
    reset_peak_rss()
    start = time.perf_counter()
    g = train_gradiend(model, train_side, steps=args.steps, eval_every=args.eval_every, n_eval=2 * per, seeds=(0,),
                       source="counterfactual", target="diff", cache_gib=args.cache_gib)
    wall = time.perf_counter() - start
    peak = peak_rss_mb()
    start = time.perf_counter()
    enc = g.encode(model, test)
    out = {"train_wall_s": wall, "peak_rss_mb": peak, "abs_r": abs(enc.correlation()), "mean_by_class": enc.class_means(),
           "n_samples": len(test), "encode_wall_s": time.perf_counter() - start, "time": g.info["seconds"],
           "coordinates": g.n_coordinates}
    args.out.write_text(json.dumps(out))


def throughput_worker(args: argparse.Namespace) -> None:
    """Rows per second of the gradient pair on batches of 32 rows, and the peak memory of doing it."""
    import torch
    from memory import peak_rss_mb, reset_peak_rss

    import trilens
    from trilens.features import zoo_feature_data
    from trilens.features.gradients import GradientReader, top_coordinates
    from trilens.features.params import select_parameters
    from trilens.features.training import class_batches

    torch.set_num_threads(args.threads)
    data = zoo_feature_data("decoder", n_train=BATCH * 2 * (args.batches + 2), n_test=2, n_neutral=0)
    batches = class_batches(data, BATCH, 0)
    if args.side == "hf":
        import transformers as tf

        hf = tf.AutoModelForCausalLM.from_pretrained(args.model).eval()
        tok = tf.AutoTokenizer.from_pretrained(args.model)
        base = [p for n, p in hf.named_parameters() if n.startswith("transformer.")]

        def pair(rows):
            out = []
            for which in ("factual", "counterfactual"):
                ids = [tok(r.text)["input_ids"] + [tok.convert_tokens_to_ids(getattr(r, which))] for r in rows]
                width = max(map(len, ids))
                inputs = torch.full((len(ids), width), tok.pad_token_id)
                mask = torch.zeros_like(inputs)
                labels = torch.full_like(inputs, -100)
                for i, row in enumerate(ids):
                    inputs[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
                    labels[i, len(row) - 1] = row[-1]
                hf.zero_grad(set_to_none=True)
                hf(input_ids=inputs, attention_mask=mask, labels=labels).loss.backward()
                out.append(torch.cat([p.grad.reshape(-1) for p in base]))
            return out
    else:
        model = trilens.load(str(args.model))
        layout = select_parameters(model)
        reader = GradientReader(model, layout)
        if args.keep < 1:
            reader = GradientReader(model, layout, top_coordinates(reader, batches[:2], args.keep))
        pair = reader.pair
    pair(batches[2])  # warm-up
    reset_peak_rss()
    start = time.perf_counter()
    size = 0
    for rows in batches[2: 2 + args.batches]:
        g_f, _ = pair(rows)
        size = g_f.numel()
    wall = time.perf_counter() - start
    args.out.write_text(json.dumps({"rows_per_s": BATCH * args.batches / wall, "peak_rss_mb": peak_rss_mb(),
                                    "coordinates": size}))


def run(cmd: list[str], out: Path, timeout: int = 3600) -> dict:
    done = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-package", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--batches", type=int, default=None, help="timed batches of 32 rows per throughput worker")
    parser.add_argument("--worker", choices=["trilens-train", "throughput"], default=None)
    parser.add_argument("--side", choices=["trilens", "hf"], default="trilens")
    parser.add_argument("--keep", type=float, default=1.0)
    parser.add_argument("--cache-gib", type=float, default=2.0, help="trilens worker: memory for keeping gradients")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    steps = args.steps or (40 if args.quick else 300)
    batches = args.batches or (2 if args.quick else 5)
    if args.worker == "trilens-train":
        args.steps = steps
        return trilens_train_worker(args)
    if args.worker == "throughput":
        args.batches = batches
        return throughput_worker(args)

    me = [sys.executable, str(Path(__file__).resolve())] + (["--quick"] if args.quick else [])
    common = ["--steps", str(steps), "--eval-every", str(args.eval_every), "--threads", str(args.threads)]
    print(f"# gradiend benchmark — steps {steps}, eval every {args.eval_every}, {args.threads} threads"
          + (" (quick)" if args.quick else ""))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not args.skip_package:
            from gradiend_env import ensure_gradiend_env

            from trilens.zoo import zoo_path

            data, _, _, validation, per = concept(args.quick)
            csv = package_csv(data, validation, tmp / "rows.csv")
            ours = run([*me, "--worker", "trilens-train", *common], tmp / "trilens.json")
            uncached = run([*me, "--worker", "trilens-train", "--cache-gib", "0", *common], tmp / "trilens-nocache.json")
            theirs = run([str(ensure_gradiend_env()), str(HERE / "gradiend_runner.py"), "--model", str(zoo_path("bert")),
                          "--data", str(csv), "--eval-per-class", str(per), *common], tmp / "package.json")
            print("\n## zoo:bert, names (she vs he): trilens vs gradiend 0.2.3\n")
            print("| tool | coordinates | held-out abs r | mean A | mean B | train wall s | peak RSS MB |")
            print("|---|---|---|---|---|---|---|")
            for name, r in (("trilens", ours), ("trilens, no gradient cache (cache_gib=0)", uncached),
                            ("gradiend 0.2.3", theirs)):
                means = list(r["mean_by_class"].values())
                coords = f"{r['coordinates']:,}" if r["coordinates"] else "?"
                print(f"| {name} | {coords} | {r['abs_r']:.4f} | {max(means):+.3f} | {min(means):+.3f} | {r['train_wall_s']:.1f} | "
                      f"{r['peak_rss_mb']:.0f} |")
            print(f"\nspeed-up to {steps} steps: {theirs['train_wall_s'] / ours['train_wall_s']:.2f}x "
                  f"({theirs['train_wall_s'] / uncached['train_wall_s']:.2f}x without the gradient cache); |r| trilens - "
                  f"package: {ours['abs_r'] - theirs['abs_r']:+.4f}")
            print(f"trilens time split: {json.dumps({k: round(v, 1) for k, v in ours['time'].items()})}")
            print(f"package time split: {json.dumps(theirs['time'])[:400]}")
        if not args.skip_throughput:
            from attribution import model_dir

            folder = model_dir("gpt2-small", args.quick, tmp)
            print("\n## gradient pair extraction, GPT-2-small-shaped random model, batches of 32 rows\n")
            print("| side | kept | coordinates | rows/s | peak RSS MB | rows/s vs plain HF |")
            print("|---|---|---|---|---|---|")
            base = run([*me, "--worker", "throughput", "--side", "hf", "--model", str(folder), "--batches", str(batches),
                        "--threads", str(args.threads)], tmp / "hf.json")
            print(f"| plain HF (.grad, twice) | 100% | {base['coordinates']:,} | {base['rows_per_s']:.1f} | "
                  f"{base['peak_rss_mb']:.0f} | 1.00x |")
            for keep in (1.0, 0.1, 0.01):
                r = run([*me, "--worker", "throughput", "--side", "trilens", "--keep", str(keep), "--model", str(folder),
                         "--batches", str(batches), "--threads", str(args.threads)], tmp / f"t{keep}.json")
                print(f"| trilens GradientReader.pair | {keep:.0%} | {r['coordinates']:,} | {r['rows_per_s']:.1f} | "
                      f"{r['peak_rss_mb']:.0f} | {r['rows_per_s'] / base['rows_per_s']:.2f}x |")


if __name__ == "__main__":
    main()
