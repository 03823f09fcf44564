"""Attention degeneration on the zoo: zoo:gpt (decoder-only) vs zoo:t5 (encoder-decoder) on long reversals and logic.

Question (after Fu et al. 2023, "Decoder-Only or Encoder-Decoder?"): as a decoder-only model generates, does its attention
to the source decay, while an encoder-decoder's does not? Measured per generation step by attention mass (decoder-only:
mass on the prompt, against the uniform-attention baseline N / (N + t - 1)) and by source sensitivity
||d h^l_p / d E_src||_F normalised by step 1 (both families), on the same teacher-forced targets.
"""

from __future__ import annotations

from typing import Any

import torch

import trilens
from trilens.attention import attention_steps, relevancy_maps
from trilens.attention.perturbation import FRACTIONS, area, perturbation_curve
from trilens.capture.steps_input import step_inputs
from trilens.study import StudyContext
from trilens.viz import curves
from trilens.zoo import tasks as T
from trilens.zoo.formats import lm_item, seq2seq_item

PAPER = "Fu et al. (2023), Decoder-Only or Encoder-Decoder?"
KEPT = 0.9  # the source is still read while S(t) / S(1), mean over the reported steps after step 1, is at least this
SENSITIVITY_NOTE = "S is trilens's definition after the paper (its exact formula was not available)"


def _inputs(model, examples):
    """Prompts and their correct continuations (decoder-only), or (source, target) pairs: the same steps for both."""
    if model.family == "decoder":
        items = [lm_item(e) for e in examples]
        return [i.prompt for i in items], [i.answer for i in items]
    return [seq2seq_item(e) for e in examples], None


def _exact_match(model, examples) -> float:
    inputs = [lm_item(e).prompt if model.family == "decoder" else seq2seq_item(e)[0] for e in examples]
    gen = model.generate(inputs, max_new_tokens=max(len(e.target.split()) for e in examples) + 2)
    return sum(t.split() == e.target.split() for t, e in zip(gen.texts, examples)) / len(examples)


def _mean(curve: Any) -> torch.Tensor:
    """The mean per step of a one-series ``AttentionStepsResult.curve(..., by="all")``."""
    return torch.as_tensor(curve["mean"].to_numpy())


def _at(curve: torch.Tensor, steps: list[int]) -> dict[str, float]:
    return {str(t): round(float(curve[t - 1]), 4) for t in steps if t <= len(curve) and not torch.isnan(curve[t - 1])}


def run(ctx: StudyContext) -> None:
    cfg = ctx.config
    lo, hi = cfg["reverse_lengths"]
    tasks = {"reverse": T.reverse(cfg["n_reverse"], seed=cfg["seed"], lengths=(lo, hi), split="test"),
             "logic": T.logic(cfg["n_logic"], seed=cfg["seed"], depths=tuple(cfg["logic_depths"]), split="test")}
    report = cfg["report_steps"]
    sens_curves: dict[str, dict[str, Any]] = {task: {} for task in tasks}
    for name in cfg["models"]:
        model = trilens.load(name)
        short = name.split(":")[-1]
        for task, examples in tasks.items():
            inputs, targets = _inputs(model, examples)
            res = attention_steps(model, inputs, targets, sensitivity=cfg["sensitivity"], probes=cfg["probes"],
                                  seed=cfg["seed"], batch_size=cfg["batch_size"], progress=ctx.progress)
            key = f"{short}/{task}"
            m: dict = {"exact_match": round(_exact_match(model, examples), 4), "n": len(examples),
                       "steps": int(res.valid.sum(1).max())}
            sens = {v: res.curve(v, by="all") for v in ("sensitivity", "residual_sensitivity")}
            m["sensitivity_by_step"] = _at(_mean(sens["sensitivity"]), report)
            m["residual_sensitivity_by_step"] = _at(_mean(sens["residual_sensitivity"]), report)
            sens_curves[task][short] = sens["sensitivity"]
            if model.family == "decoder":
                mass = _mean(res.curve("source_mass", by="all"))
                no_sink = _mean(res.curve("source_mass_no_sink", by="all"))
                base = res.baseline.nanmean(0)
                m["source_mass_by_step"] = _at(mass, report)
                m["source_mass_no_sink_by_step"] = _at(no_sink, report)
                m["uniform_baseline_by_step"] = _at(base, report)
                m["source_mass_over_baseline_by_step"] = _at(mass / base, report)
                ctx.figure(f"{short}_{task}_source_mass", res.figure("source_mass"))
            else:
                m["cross_entropy_by_step"] = _at(_mean(res.curve("cross_entropy", by="all")), report)
                m["cross_coverage_by_step"] = _at(_mean(res.curve("cross_coverage", by="all")), report)
            ctx.figure(f"{short}_{task}_sensitivity_by_layer", res.figure("sensitivity"))
            ctx.figure(f"{short}_{task}_grid", res.grid_figure())
            ctx.table(f"{short}_{task}_steps", res.to_frame().groupby(["metric", "layer", "step"], as_index=False)["value"].mean())
            if task == "reverse":
                m["perturbation_area"] = _perturbation(ctx, model, short, inputs, targets)
            ctx.metric(key, m)
    for task, by_model in sens_curves.items():
        n = min(len(c) for c in by_model.values())
        ctx.figure(f"{task}_sensitivity_gpt_vs_t5", curves(
            list(range(1, n + 1)), {k: c["mean"].to_numpy()[:n] for k, c in by_model.items()},
            bands={k: c["se"].to_numpy()[:n] for k, c in by_model.items()}, hline=(1.0, "step 1"), x_title="generation step t",
            y_title="S(t) / S(1), mean of layers",
            title=f"{task}: attention output's source sensitivity per step (after Fu et al. 2023)"))
    _summary(ctx, report)
    _claims(ctx)


def _perturbation(ctx: StudyContext, model, short: str, inputs, targets) -> dict[str, float]:
    """Chefer et al.'s check: the target's probability as source tokens are removed, most relevant first (lower area is
    better), least relevant first (higher is better) or at random; relevancy and rollout."""
    steps = step_inputs(model, inputs, targets)
    maps = relevancy_maps(model, steps, methods=("relevancy", "rollout"))
    out, lines = {}, {}
    for method in ("relevancy", "rollout"):
        for order in ("positive", "negative"):
            curve = perturbation_curve(model, steps, maps.maps[method]["source"], order=order, seed=ctx.config["seed"],
                                       progress=ctx.progress)
            out[f"{method}/{order}"] = round(area(curve), 4)
            lines[f"{method}, {'most' if order == 'positive' else 'least'} relevant first"] = curve
    curve = perturbation_curve(model, steps, maps.maps["relevancy"]["source"], order="random", seed=ctx.config["seed"])
    out["random"] = round(area(curve), 4)
    lines["random order"] = curve
    ctx.figure(f"{short}_reverse_perturbation", curves(
        list(FRACTIONS), lines, dash={"random order": "dot"}, x_title="fraction of source tokens removed",
        y_title="p(target token)", title=f"{short} on reverse: removing source tokens by relevancy / rollout"))
    return out


def _summary(ctx: StudyContext, report: list[int]) -> None:
    m = ctx.metrics
    ctx.say(f"# Study attention_degeneration ({'quick' if ctx.config['n_reverse'] < 20 else 'full'} run)")
    for key, v in m.items():
        ctx.say(f"- {key}: exact match {v['exact_match']:.2f} on {v['n']} examples, up to {v['steps']} steps")
        if "source_mass_by_step" in v:
            ctx.say(f"  source mass {v['source_mass_by_step']} vs uniform {v['uniform_baseline_by_step']}")
        ctx.say(f"  attention-output sensitivity / step 1: {v['sensitivity_by_step']}")
        ctx.say(f"  residual-stream sensitivity / step 1: {v['residual_sensitivity_by_step']}")
        if "perturbation_area" in v:
            ctx.say(f"  perturbation areas (lower = better for most-relevant-first): {v['perturbation_area']}")


def _after_first(by_step: dict[str, float]) -> list[float]:
    return [v for t, v in by_step.items() if int(t) > 1]


def _claims(ctx: StudyContext) -> None:
    """Fu et al.'s claims against the reversals (logic's answer is one step: nothing to degenerate)."""
    for key, m in ctx.metrics.items():
        if not key.endswith("/reverse") or not _after_first(m["residual_sensitivity_by_step"]):
            continue
        model, decoder = f"zoo:{key.split('/')[0]}", "source_mass_by_step" in m
        attn, resid = _after_first(m["sensitivity_by_step"]), _after_first(m["residual_sensitivity_by_step"])
        attn_mean, resid_mean = sum(attn) / len(attn), sum(resid) / len(resid)
        last = max(m["residual_sensitivity_by_step"], key=int)
        attention = "attention" if decoder else "cross-attention"
        measured = (f"{model} on reverse, S(t) / S(1) over the reported steps after step 1 (up to {last}): {attention} "
                    f"output {min(attn):.2f}-{max(attn):.2f} (mean {attn_mean:.2f}), residual stream "
                    f"{min(resid):.2f}-{max(resid):.2f} (mean {resid_mean:.2f})")
        if decoder:
            mass, ratio = m["source_mass_by_step"], _after_first(m["source_mass_over_baseline_by_step"])
            last = max(mass, key=int)
            ctx.claim("As a decoder-only model generates, the share of its attention that goes to the source falls.",
                      paper=PAPER,
                      measured=f"{model} on reverse: attention mass on the prompt {mass['1']:.2f} at step 1, "
                               f"{mass[last]:.2f} at step {last}; {min(ratio):.2f}-{max(ratio):.2f} of uniform causal "
                               "attention's N / (N + t - 1)",
                      verdict="reproduced" if mass[last] < mass["1"] - 0.05 else "not reproduced",
                      note="reproduced if it falls by more than 0.05; " + (
                          f"no faster than uniform attention (at least {KEPT} of it): the fall is structural"
                          if min(ratio) >= KEPT else f"under {KEPT} of uniform attention at some step: beyond it"))
            ctx.claim("As a decoder-only model generates, its output becomes less sensitive to the source.",
                      paper=PAPER, measured=measured, verdict="reproduced" if resid_mean < KEPT else "not reproduced",
                      note=f"reproduced if the residual stream's mean is below {KEPT}"
                           + (f" (the attention outputs' is not: {attn_mean:.2f})" if attn_mean >= KEPT else "")
                           + f"; {SENSITIVITY_NOTE}")
        else:
            ctx.claim("An encoder-decoder keeps reading its source: its sensitivity to the source does not decay as it "
                      "generates.", paper=PAPER, measured=measured,
                      verdict="reproduced" if min(attn_mean, resid_mean) >= KEPT else "not reproduced",
                      note=f"reproduced if both means are at least {KEPT}; {SENSITIVITY_NOTE}")
