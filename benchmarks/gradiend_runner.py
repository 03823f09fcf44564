"""Train the ``gradiend`` package (0.2.3, in its own venv: benchmarks/gradiend_env.py) on a local masked-LM folder
and a CSV of rows, as benchmarks/gradiend.py asks; report wall time, peak memory and the held-out encoder metrics.

    $(python benchmarks/gradiend_env.py) benchmarks/gradiend_runner.py --model DIR --data rows.csv --steps 300 \\
        --eval-every 50 --eval-per-class 32 --out result.json

Settings are the package's own defaults except those the comparison fixes for both tools: one seed, ``max_steps``,
the evaluation period and size, source = the counterfactual ("alternative") gradient, target = diff, batch 32,
lr 1e-5, weight decay 1e-2, no pre-pruning. The package pads every input to a fixed length (256 tokens; capped here
at the model's 64 positions, see ``fit_padding``) and computes both gradients on every step (it keeps none between
steps); that is its design, timed as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
HERE = Path(__file__).resolve().parent
# benchmarks/gradiend.py would shadow the package: import it with this folder off the path, then put it back
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
import gradiend  # noqa: E402

sys.path.append(str(HERE))


def fit_padding(limit: int) -> None:
    """The package pads every text to 256 tokens, a default no trainer argument reaches; the zoo's models have 64
    positions. Cap that padding at the model's limit (which also spares the package three quarters of its padding)."""
    from gradiend.trainer.text.common.dataset_base import TextBatchedDatasetBase

    original = TextBatchedDatasetBase.__init__

    def init(self, *args, max_length: int = 256, **kwargs):
        original(self, *args, max_length=min(max_length, limit), **kwargs)

    TextBatchedDatasetBase.__init__ = init


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--eval-every", type=int, required=True)
    parser.add_argument("--eval-per-class", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import pandas as pd
    import torch
    import transformers
    from memory import peak_rss_mb, reset_peak_rss

    TextPredictionTrainer, TrainingArguments = gradiend.TextPredictionTrainer, gradiend.TrainingArguments
    torch.set_num_threads(args.threads)
    fit_padding(transformers.AutoConfig.from_pretrained(args.model).max_position_embeddings)
    frame = pd.read_csv(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(experiment_dir=tmp, train_batch_size=32, learning_rate=1e-5, weight_decay=1e-2,
                                  max_steps=args.steps, eval_steps=args.eval_every,
                                  encoder_eval_train_max_size=args.eval_per_class, max_seeds=1, min_convergent_seeds=1,
                                  source="alternative", target="diff", seed=0, use_cache=False, save_only_best=True)
        trainer = TextPredictionTrainer(model=str(args.model), data=frame, target_classes=["A", "B"], args=targs)
        reset_peak_rss()
        start = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - start
        peak = peak_rss_mb()
        start = time.perf_counter()
        enc = trainer.evaluate_encoder(split="test", max_size=10_000)
        eval_wall = time.perf_counter() - start
        stats = {}
        for path in Path(tmp).rglob("training.json"):
            stats = json.loads(path.read_text()).get("time", {})
            break
    try:
        coordinates = int(trainer.get_model().gradiend.input_dim)
    except AttributeError:  # not where 0.2.3 keeps it
        coordinates = None
    means = {str(k): float(v) for k, v in (enc.get("mean_by_class") or {}).items()}
    args.out.write_text(json.dumps({"train_wall_s": wall, "peak_rss_mb": peak, "abs_r": abs(float(enc["correlation"])),
                                    "mean_by_class": means, "n_samples": enc.get("n_samples"), "encode_wall_s": eval_wall,
                                    "coordinates": coordinates,
                                    "time": stats}))


if __name__ == "__main__":
    main()
