"""Every analysis on a CUDA device, against the same analysis on the CPU (issue 26).

    python benchmarks/gpu_check.py [--models zoo:gpt zoo:t5] [--atol 1e-4]
    python benchmarks/gpu_check.py --device cpu     # the same script without a GPU: CPU against CPU, split to disk

For each zoo model, each analysis runs three ways: on the CPU (the reference), on the GPU (``device="cuda"``), and
with an accelerate ``device_map`` that keeps part of the model on the GPU and offloads the rest to the CPU
(``max_memory={0: ~40% of the weights, "cpu": ...}``). Each run's result is compared with the CPU's (the largest
absolute difference of its main tensor; TF32 is turned off so float32 stays float32), and the table gives the
times. A model whose bridge cannot run offloaded layers says so in the split column instead of failing the check.

Not part of the test suite (CI has no GPU); without a CUDA device it exits at once, saying so.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

warnings.filterwarnings("ignore")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


def analyses(family: str) -> dict[str, Callable[[Any], torch.Tensor]]:
    """Analysis name -> a function of a loaded model returning the tensor that is compared."""
    from trilens import Patch, StepScores
    from trilens.attention import attention_steps, relevancy_maps
    from trilens.attribution import attribute
    from trilens.lens import LinearShortcut, logit_lens
    from trilens.patching import attribution_patching, edge_attribution, patching_sweep

    if family == "encoder-decoder":
        inputs = [("( T and F ) =", "F"), ("a b c d >", "d c b a")]
        clean, corrupted = [("( T and F ) =", "F")], [("( T and T ) =", "F")]
        sources = [s for s, _ in inputs]
    else:
        inputs = ["not ( T and F ) =", "the key to the cabinets"]
        clean, corrupted = ["not ( T and F ) ="], ["not ( T and T ) ="]
        sources = inputs

    def patched(m: Any) -> torch.Tensor:
        site = m.sites(stack=m.stacks[-1], kind="resid_post")[0]
        return m.run(inputs, interventions=[Patch(site, torch.ones(m.d_model), positions=[0])])

    checks = {
        "run (logits)": lambda m: m.run(inputs),
        "trace (every residual)": lambda m: torch.cat([v.flatten() for v in m.trace(inputs, sites="resid").values()]),
        "generate (8 tokens)": lambda m: m.generate(sources, max_new_tokens=8).sequences.float(),
        "gradients (per step, resid_post)": lambda m: torch.cat([g.flatten() for g in m.gradients(
            inputs, StepScores(), sites="resid_post").grads.values()]),
        "patch (one Patch)": patched,
        "logit lens (KL per layer)": lambda m: logit_lens(m, inputs).metrics["kl"],
        "attribution (IG, 16 points)": lambda m: torch.tensor(attribute(m, inputs, method="ig", n_steps=16)
                                                               .to_frame()["value"].to_numpy()),
        "attention steps": lambda m: torch.cat([v.flatten() for v in attention_steps(
            m, sources, max_new_tokens=6, sensitivity="estimate", probes=8).metrics.values()]).nan_to_num(),
        "relevancy maps": lambda m: torch.tensor(relevancy_maps(m, sources, max_new_tokens=4).to_frame()
                                                 .select_dtypes("number").to_numpy()).flatten().float(),
        "patching sweep": lambda m: torch.tensor(patching_sweep(m, clean, corrupted, "kl", progress=False)
                                                 .to_frame()["value"].to_numpy()),
        "attribution patching (AtP)": lambda m: torch.tensor(attribution_patching(m, clean, corrupted, "kl")
                                                             .to_frame()["value"].to_numpy()),
        "edge attribution (EAP-IG)": lambda m: torch.tensor(edge_attribution(m, clean, corrupted, "kl", steps=3,
                                                                             progress=False).to_frame()["score"].to_numpy()),
        "linear shortcut (W)": lambda m: LinearShortcut.fit(m, sources, layer=1, progress=False).W,
    }
    return checks


def timed(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor | None, float, str]:
    start = time.perf_counter()
    try:
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return out.detach().float().cpu(), time.perf_counter() - start, ""
    except Exception as err:  # noqa: BLE001 - the table reports every failure, one line each
        return None, time.perf_counter() - start, f"{type(err).__name__}: {str(err).splitlines()[0][:90]}"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["zoo:gpt", "zoo:t5"])
    parser.add_argument("--atol", type=float, default=1e-4)
    parser.add_argument("--device", default="cuda", help="'cpu' checks the script itself where there is no GPU: the "
                        "'gpu' column runs on the CPU and the split offloads to disk")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); nothing to check. Run it on a "
              "machine with a GPU and a CUDA build of torch.")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    import trilens
    from accelerate.utils import compute_module_sizes

    gpu_name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu (a check of the script)"
    print(f"device: {gpu_name}; torch {torch.__version__}; tolerance {args.atol:g}\n")
    failed = 0
    for name in args.models:
        cpu = trilens.load(name)
        gpu = trilens.load(name, device=args.device)
        size = compute_module_sizes(cpu.hf_model)[""]
        with tempfile.TemporaryDirectory() as offload:
            try:
                memory = {0: int(size * 0.4), "cpu": 8 * size} if args.device == "cuda" else {"cpu": int(size * 0.4)}
                split = trilens.load(name, device_map="auto", max_memory=memory, offload_folder=offload)
                split_note = ", ".join(f"{m or 'all'}->{d}" for m, d in (split.placement() or {}).items())
            except trilens.TrilensError as err:
                split, split_note = None, str(err).split(":")[0]
            print(f"## {name} ({cpu.architecture}); split: {split_note}")
            print(f"{'analysis':<36}{'cpu s':>8}{'gpu s':>8}{'gpu diff':>11}{'split s':>9}{'split diff':>12}")
            for what, fn in analyses(cpu.family).items():
                ref, t_cpu, err_cpu = timed(lambda: fn(cpu))
                row = f"{what:<36}{t_cpu:>8.2f}"
                for model in (gpu, split):
                    if model is None:
                        row += f"{'-':>9}{'refused':>12}"
                        continue
                    out, t, err = timed(lambda m=model: fn(m))
                    if err or err_cpu or ref is None or out is None or out.shape != ref.shape:
                        failed += 1
                        row += f"{t:>8.2f}  {err or err_cpu or 'shape differs'}"
                        continue
                    diff = float((out - ref).abs().max()) if out.numel() else 0.0
                    failed += diff > args.atol
                    row += f"{t:>8.2f}{diff:>11.1e}" if model is gpu else f"{t:>9.2f}{diff:>12.1e}"
                print(row)
            print()
    print("all results within tolerance" if not failed else f"{failed} result(s) differ beyond {args.atol:g} or failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
