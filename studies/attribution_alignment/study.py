"""Attribution alignment on the zoo: do attributions point at the token that must have caused each output?

Known answers: on ``reverse`` (zoo:gpt, zoo:t5) output step t copies source position N - 1 - t; on ``agreement``
(zoo:bert at the mask, zoo:gpt at the verb) the verb's number comes from the subject noun, not from an attractor noun of
the other number in between. Per method (captum's, through ``trilens.attribution.attribute``; per-token L2 norm; methods
with a baseline start from the [PAD] embedding, ``baseline`` in config.json) and per
attention baseline (last-layer attention, rollout, relevancy): how often the top source token is the right one, the
mean rank of the right one, and for agreement how often the subject outscores every attractor; chance alongside.
"""

from __future__ import annotations

import pandas as pd

import trilens
from trilens.attention import relevancy_maps
from trilens.attribution import attribute
from trilens.attribution.methods import method_spec
from trilens.study import StudyContext
from trilens.zoo import tasks as T
from trilens.zoo.formats import lm_item, mlm_item, seq2seq_item

RUNS = (("zoo:gpt", "reverse"), ("zoo:t5", "reverse"), ("zoo:bert", "agreement"), ("zoo:gpt", "agreement"))
IG_PAPER_STEPS = 20  # Sundararajan et al.: 20 to 300 steps approximate the integral within 5%
IG_DELTA_OK = 0.1  # log-prob units: the largest median convergence delta that counts as complete


def _reverse(model, examples):
    """Inputs, targets and per example the right source position of every step (N - 1 - t)."""
    if model.family == "decoder":
        items = [lm_item(e) for e in examples]
        inputs, targets = [i.prompt for i in items], [i.answer for i in items]
    else:
        inputs, targets = [seq2seq_item(e) for e in examples], None
    right = [[e.meta["length"] - 1 - t for t in range(e.meta["length"])] for e in examples]
    return inputs, targets, right, [[] for _ in examples]


def _agreement(model, examples):
    """Inputs, the verb as target, the subject's position and the attractors' (nouns of the other number)."""
    plural = {pl: True for _, pl in T.NOUNS} | {sg: False for sg, _ in T.NOUNS}
    offset = 1 if model.family == "encoder" else 0  # [CLS]
    right, attractors = [], []
    for e in examples:
        words = e.text.split()
        subject = plural[words[1]]
        right.append([1 + offset])
        attractors.append([i + offset for i in range(4, len(words), 3) if plural[words[i]] != subject])
    if model.family == "encoder":
        return [mlm_item(e).text for e in examples], [e.target for e in examples], right, attractors
    return [e.text for e in examples], [e.target for e in examples], right, attractors


def _attention(model, inputs, targets):
    """Last-layer attention (mean over heads) of each step's row over the source: ``[input, step, source]``."""
    from trilens.capture.steps_input import step_inputs

    if model.family == "encoder":
        cache = model.trace(inputs, sites=model.sites(kind="attn_pattern")[-1:])
        pattern = cache[list(cache)[0]].mean(1)  # [B, Q, K]
        positions = _positions(model, inputs)
        return pattern.gather(1, positions[..., None].expand(-1, -1, pattern.shape[-1]))
    steps = step_inputs(model, inputs, targets)
    kind = "cross_attn_pattern" if model.family == "encoder-decoder" else "attn_pattern"
    cache = model.trace(steps.rows, sites=model.sites(kind=kind)[-1:])
    pattern = cache[list(cache)[0]].mean(1)
    return pattern.gather(1, steps.positions[..., None].expand(-1, -1, pattern.shape[-1]))


def _score(maps, right, attractors, n_source):
    """Top-1 rate, mean rank (1 = best), subject-over-attractors rate and their chance levels."""
    top, ranks, beats, chance_top, chance_rank, chance_beats = [], [], [], [], [], []
    for b, steps in enumerate(right):
        for t, r in enumerate(steps):
            row = maps[b][t][: n_source[b]]
            top.append(float(int(row.argmax()) == r))
            ranks.append(1 + int((row > row[r]).sum()))
            chance_top.append(1 / n_source[b])
            chance_rank.append((n_source[b] + 1) / 2)
            if attractors[b]:
                beats.append(float(bool((row[r] > row[attractors[b]]).all())))
                chance_beats.append(1 / (1 + len(attractors[b])))
    out = {"top1": sum(top) / len(top), "mean_rank": sum(ranks) / len(ranks),
           "chance_top1": sum(chance_top) / len(top), "chance_rank": sum(chance_rank) / len(ranks), "n_steps": len(top)}
    if beats:
        out.update(subject_over_attractors=sum(beats) / len(beats), chance_over_attractors=sum(chance_beats) / len(beats))
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def run(ctx: StudyContext) -> None:
    cfg = ctx.config
    n, seed = cfg["n"], cfg["seed"]
    examples = {"reverse": T.reverse(n, seed=seed, lengths=tuple(cfg["reverse_lengths"]), split="test"),
                "agreement": [e for e in T.agreement(n * 6, seed=seed, split="test", max_distractors=2)
                              if e.meta["attractor"]][:n]}
    rows = []
    for name, task in RUNS:
        model = trilens.load(name)
        short = f"{name.split(':')[-1]}/{task}"
        inputs, targets, right, attractors = (_reverse if task == "reverse" else _agreement)(model, examples[task])
        metrics = {}
        first = None
        for method in cfg["methods"]:
            if method == "deeplift" and model.family == "encoder-decoder":
                continue  # captum's DeepLift cannot hook T5's bridged ReLU modules (see trilens.attribution)
            spec = method_spec(method)
            res = attribute(model, inputs, targets, method=method, n_steps=cfg["ig_steps"], step_scores=("probability",),
                            baseline=None if spec.baseline == "none" else cfg["baseline"],
                            batch_size=cfg["batch_size"], progress=ctx.progress)
            first = first or res
            n_source = [len(s) for s in res.source_tokens]
            _check_answers(res, right, task)
            maps = [res.scores(b, "source") for b in range(res.n_inputs)]
            metrics[method] = _score(maps, right, attractors, n_source)
            if method == "integrated_gradients":
                metrics[method]["median_delta"] = round(float(res.deltas[res.valid].median()), 4)
        for base in cfg["baselines"]:
            if base == "attention":
                att = _attention(model, inputs, targets)
                maps = [att[b, : len(right[b])] for b in range(len(right))]
            else:
                rel = relevancy_maps(model, inputs, targets, methods=(base,))
                maps = [rel.map(base, b) for b in range(len(right))]
            metrics[base] = _score(maps, right, attractors, n_source)
        metrics["model_probability"] = round(float(first.step_scores["probability"][first.valid].mean()), 4)
        ctx.metric(short, metrics)
        for method, m in metrics.items():
            if isinstance(m, dict):
                rows.append({"run": short, "method": method, **m})
        ctx.figure(f"{short.replace('/', '_')}_example", first.figure(0))
    table = pd.DataFrame(rows)
    ctx.table("alignment", table)
    _summary(ctx, table)
    _claims(ctx)


def _positions(model, inputs):
    """An encoder's mask position per input ``[input, 1]``."""
    ids = model.encode(inputs).input_ids
    return (ids == model.tokenizer.mask_token_id).float().argmax(1)[:, None]


def _check_answers(res, right, task):
    """The known answers point where they should: the reversed symbol is the source token at N - 1 - t."""
    if task != "reverse":
        return
    for b, steps in enumerate(right):
        for t, r in enumerate(steps):
            if res.source_tokens[b][r] != res.step_tokens[b][t]:
                raise RuntimeError(f"example {b} step {t}: source {res.source_tokens[b][r]!r} is not the output "
                                   f"{res.step_tokens[b][t]!r}")


def _summary(ctx: StudyContext, table) -> None:
    ctx.say(f"# Study attribution_alignment ({'quick' if ctx.config['n'] < 20 else 'full'} run, {ctx.config['n']} "
            "examples per run)")
    ctx.say()
    ctx.say("top-1 = the top source token is the right one; rank 1 = best; subj>attr = the subject outscores every "
            "attractor noun (agreement only).")
    ctx.say()
    for run_name, part in table.groupby("run", sort=False):
        first = part.iloc[0]
        against = first.get("chance_over_attractors")
        ctx.say(f"## {run_name} (chance: top-1 {first.chance_top1:.3f}, rank {first.chance_rank:.2f}"
                + (f", subj>attr {against:.3f})" if pd.notna(against) else ")"))
        for _, r in part.iterrows():
            beats = r.get("subject_over_attractors")
            extra = f", subj>attr {beats:.3f}" if pd.notna(beats) else ""
            ctx.say(f"- {r.method}: top-1 {r.top1:.3f}, mean rank {r.mean_rank:.2f}{extra}")


def _claims(ctx: StudyContext) -> None:
    """The founding papers' claims against the top-1 rates and convergence deltas of every run."""
    cfg = ctx.config
    runs = {short: m for short, m in ctx.metrics.items() if isinstance(m, dict)}
    if "integrated_gradients" in cfg["methods"]:
        deltas = ", ".join(f"{short} {m['integrated_gradients']['median_delta']:.3g}" for short, m in runs.items())
        complete = max(m["integrated_gradients"]["median_delta"] for m in runs.values()) <= IG_DELTA_OK
        too_few_steps = cfg["ig_steps"] < IG_PAPER_STEPS
        ctx.claim("Integrated gradients are complete: the attributions add up to f(input) - f(baseline), and 20-300 "
                  "integration steps approximate that within a few percent.", paper="Sundararajan et al. 2017",
                  measured=f"median |sum of attributions - (f(x) - f(baseline))| at {cfg['ig_steps']} points from "
                           f"the {cfg['baseline']} baseline: {deltas} log-prob units",
                  verdict="not comparable" if too_few_steps else "reproduced" if complete else "not reproduced",
                  note=f"reproduced if every run's median delta is at most {IG_DELTA_OK} log-prob units"
                       + (f"; not comparable below the paper's {IG_PAPER_STEPS} steps" if too_few_steps else ""))
        if "saliency" in cfg["methods"]:
            _top1_claim(ctx, runs, "integrated_gradients", ["saliency"], ties=True, paper="Sundararajan et al. 2017",
                        claim="Integrated gradients, unlike plain gradients, satisfy sensitivity, so they credit the "
                              "input that the output depends on better than gradients (saliency) do.",
                        note="the paper argues from axioms; reproduced if integrated gradients match or beat "
                             "saliency's top-1 on most runs")
    others = [base for base in cfg["baselines"] if base != "relevancy"]
    if "relevancy" in cfg["baselines"] and others:
        _top1_claim(ctx, runs, "relevancy", others, ties=False, paper="Chefer, Gur & Wolf 2021",
                    claim="Relevancy (attention weighted by its gradients, propagated through the layers) explains a "
                          "transformer's output better than raw attention and attention rollout.",
                    note="reproduced if relevancy's top-1 beats every other attention map's on most runs; 'attention' "
                         "is the last layer's (cross-attention for T5)")


def _top1_claim(ctx: StudyContext, runs: dict, method: str, others: list[str], *, ties: bool, paper: str, claim: str,
                note: str) -> None:
    """A claim that ``method`` finds the right source token (top-1) more often than ``others`` on most runs
    (``ties``: as often counts)."""
    pairs = "; ".join(f"{short} {m[method]['top1']:.2f} vs " + " / ".join(f"{m[o]['top1']:.2f}" for o in others)
                      for short, m in runs.items())
    wins = [m for m in runs.values()
            if all(m[method]["top1"] >= m[o]["top1"] if ties else m[method]["top1"] > m[o]["top1"] for o in others)]
    name = method.replace("_", " ")
    measured = (f"top-1 rate of the right source token, {name} vs {' / '.join(others)}: {pairs}; {name} "
                f"{'at least as good' if ties else 'best'} on {len(wins)} of {len(runs)} runs")
    ctx.claim(claim, paper=paper, measured=measured, note=note,
              verdict="reproduced" if len(wins) > len(runs) / 2 else "not reproduced")
