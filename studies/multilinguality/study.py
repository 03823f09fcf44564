"""Lost in Multilinguality on the zoo's bilingual models: where in depth a fact is held, where its language is chosen,
where cross-lingual answers fail, and whether a linear shortcut from a middle layer repairs them.

Wang et al. (ACL 2025) report three findings on multilingual LLMs; each is measured here on zoo:gpt-bi (decoder-only)
and zoo:t5-bi (encoder-decoder; its decoder, at the answer's first step, reading the whole encoder):
1. the answer is found in a shared, language-independent space in the middle layers (high rank in every language,
   parallel prompts close), and the target language wins only in the last layers;
2. errors concentrate on facts the model saw in another language only, and they fail at that last transition (the
   answer was there in a middle layer, in some language, and is lost at the end);
3. a linear shortcut from a middle layer to the output raises accuracy and cross-lingual consistency on those facts.
The facts and their training languages are known by construction (``trilens.zoo.tasks.knowledge_base``): every fact is
asked in both languages, and ``split`` says whether the question's language saw it ("both", "same") or only the other
language did ("other": the transfer test).
"""

from __future__ import annotations

from typing import Any

import torch

import trilens
from trilens.lens import language_lens, shortcut_sweep
from trilens.study import StudyContext
from trilens.zoo import tasks as T

CITATION = 'Wang et al. (ACL 2025, "Lost in Multilinguality")'
PAPER = {
    "shared": "answers rank high in a language-independent space in the middle layers; the target language wins in "
              "the last layers",
    "errors": "cross-lingual errors fail at the last layers: the answer was found, then lost in the transition to "
              "the target language",
    "shortcut": "a linear shortcut from a middle layer raises accuracy and consistency on cross-lingual queries",
}


def _sentence(text: str) -> str:
    """A PAPER entry as a sentence."""
    return text[0].upper() + text[1:] + "."


def queries(cfg: dict[str, Any]) -> list[T.Example]:
    """Every fact in both languages (the first ``n_facts`` facts, when set)."""
    exs = T.facts(0, seed=cfg["seed"], split="test")
    return exs[: 2 * cfg["n_facts"]] if cfg.get("n_facts") else exs


def _first(hit: torch.Tensor) -> torch.Tensor:
    """``hit [layer, n]`` -> the first layer that hits, per column (-1: none)."""
    first = hit.int().argmax(0)
    return torch.where(hit.any(0), first, torch.full_like(first, -1))


def shared_space(ctx: StudyContext, key: str, res: Any, n_layers: int) -> None:
    """Finding 1: the layer the answer appears in any language vs the layer the target language settles."""
    ok = res.correct()
    own = res.own_rank()[:, ok]
    other_col = torch.tensor([1 - res.answer_languages.index(lang) for lang in res.languages])[ok]
    other = res.rank[:, ok.nonzero().flatten(), other_col]
    concept = torch.minimum(own, other)
    appears, settles = _first(concept == 0), res.settled_layer()[ok]
    seen_other = (other == 0).any(0)  # prompts whose other-language answer is top-1 at some layer
    before_last = slice(1, n_layers)  # the blocks' own layers, neither the embeddings nor the output
    other_top1 = (other[before_last] == 0).float().mean(1)
    gap = res.cosine.mean(1) - torch.stack(list(res.baseline.values())).mean(0)
    peak = int(gap.argmax())
    m = {
        "correct_prompts": int(ok.sum()),
        "layer_answer_appears_any_language": float(appears.float().mean()),
        "layer_own_language_settles": float(settles.float().mean()),
        "share_other_language_first": float((_first(other == 0) < _first(own == 0))[seen_other].float().mean())
                                      if bool(seen_other.any()) else 0.0,
        "other_language_top1_peak": float(other_top1.max()),
        "other_language_top1_peak_layer": int(other_top1.argmax()) + 1,
        "own_top10_by_layer": [round(float(v), 3) for v in (own < 10).float().mean(1)],
        "other_top10_by_layer": [round(float(v), 3) for v in (other < 10).float().mean(1)],
        "cosine_parallel_minus_other_by_layer": [round(float(v), 3) for v in gap],
        "cosine_gap_peak_layer": peak,
        "cosine_gap_peak": round(float(gap[peak]), 3),
        "cosine_gap_last": round(float(gap[-1]), 3),
    }
    ctx.metric(f"{key}/shared_space", m)
    # the paper's picture: the answer is there, language-independently, at least a layer before its language settles
    lead = m["layer_own_language_settles"] - m["layer_answer_appears_any_language"]
    holds = lead >= 1 or m["other_language_top1_peak"] >= 0.1
    m["lead_layers"] = round(lead, 3)
    ctx.say(f"- **Shared space** (paper: {PAPER['shared']}). Correct answers first appear (top-1 in either language) "
            f"at layer {m['layer_answer_appears_any_language']:.2f} on average and the prompt's own language settles at "
            f"{m['layer_own_language_settles']:.2f} of {n_layers}; the other language's answer is top-1 for up to "
            f"{m['other_language_top1_peak']:.0%} of them"
            + (f" (layer {m['other_language_top1_peak_layer']}), before their own language in "
               f"{m['share_other_language_first']:.0%} of those where it ever is" if m["other_language_top1_peak"] else "")
            + ". Parallel prompts "
            f"are closest, relative to prompts of other facts, at layer {peak} (cosine gap {m['cosine_gap_peak']:+.3f}; "
            f"{m['cosine_gap_last']:+.3f} at the last). {'Agrees' if holds else 'Disagrees'}.")
    ctx.claim(_sentence(PAPER["shared"]), paper=CITATION,
              measured=f"{key}: correct answers first appear (top-1, either language) at layer "
                       f"{m['layer_answer_appears_any_language']:.2f} and their language settles at "
                       f"{m['layer_own_language_settles']:.2f} of {n_layers} (lead {lead:.2f} layers); the other "
                       f"language's answer is top-1 for at most {m['other_language_top1_peak']:.0%}; parallel prompts' "
                       f"cosine gap peaks at {m['cosine_gap_peak']:+.3f} (layer {peak})",
              verdict="reproduced" if holds else "not reproduced",
              note="reproduced where the answer leads its language by at least 1 layer, or the other language's "
                   "answer is top-1 for at least 10% of correct questions at some layer")


def error_anatomy(ctx: StudyContext, key: str, res: Any, groups: list[str], n_layers: int) -> None:
    """Finding 2: where the errors are, and whether their answers were found in a middle layer and lost."""
    ok = res.correct()
    g = {name: torch.tensor([x == name for x in groups]) for name in ("both", "same", "other")}
    wrong = ~ok
    concept = res.rank[:, wrong].clamp_min(0).where(res.rank[:, wrong] >= 0, torch.tensor(10**9)).min(-1).values
    middle = concept[1:n_layers]  # after the embeddings, before the output
    lost = (middle == 0).any(0)
    best_layer = middle.argmin(0) + 1
    m = {f"accuracy_{name}": float(ok[mask].float().mean()) for name, mask in g.items()}
    m.update({
        "errors": int(wrong.sum()),
        "share_of_errors_on_other": float(g["other"][wrong].float().mean()) if bool(wrong.any()) else 0.0,
        "share_of_queries_on_other": float(g["other"].float().mean()),
        "errors_found_in_a_middle_layer": float(lost.float().mean()) if bool(wrong.any()) else 0.0,
        "errors_best_layer_mean": float(best_layer.float().mean()) if bool(wrong.any()) else -1.0,
        "errors_final_rank_median": float(res.own_rank()[-1, wrong].float().median()) if bool(wrong.any()) else -1.0,
        "consistency_model": {f"{a}-{b}": v for (a, b), v in res.consistency().items()},
    })
    ctx.metric(f"{key}/errors", m)
    concentrate = m["share_of_errors_on_other"] > m["share_of_queries_on_other"]
    lost_late = m["errors_found_in_a_middle_layer"] >= 0.5
    ctx.say(f"- **Errors** (paper: {PAPER['errors']}). Accuracy: both {m['accuracy_both']:.3f}, same language "
            f"{m['accuracy_same']:.3f}, other language only {m['accuracy_other']:.3f}; {m['share_of_errors_on_other']:.0%} "
            f"of the {m['errors']} errors are on other-language facts ({m['share_of_queries_on_other']:.0%} of queries). "
            f"{m['errors_found_in_a_middle_layer']:.0%} of the errors had the answer top-1, in some language, in a middle "
            f"layer (best at layer {m['errors_best_layer_mean']:.1f} on average). Errors concentrate on other-language "
            f"facts: {'agrees' if concentrate else 'disagrees'}; they were found and lost at the end: "
            f"{'agrees' if lost_late else 'disagrees'}.")
    ctx.claim("Cross-lingual errors concentrate on facts the model saw only in another language.", paper=CITATION,
              measured=f"{key}: {m['share_of_errors_on_other']:.0%} of the {m['errors']} errors are on facts stated "
                       f"only in the other language, {m['share_of_queries_on_other']:.0%} of the questions (accuracy "
                       f"{m['accuracy_other']:.3f} on those, {m['accuracy_same']:.3f} where only the question's "
                       "language stated the fact)",
              verdict="reproduced" if concentrate else "not reproduced",
              note="reproduced where the errors' share on those facts exceeds the questions' share")
    ctx.claim(_sentence(PAPER["errors"]), paper=CITATION,
              measured=f"{key}: {m['errors_found_in_a_middle_layer']:.0%} of the {m['errors']} errors had the answer "
                       "top-1, in some language, at a middle layer",
              verdict="reproduced" if lost_late else "not reproduced",
              note="reproduced where at least half of the errors had the answer at a middle layer")


def shortcut_effect(ctx: StudyContext, key: str, sweep: Any, beta: Any, n_layers: int) -> dict[str, Any]:
    """Finding 3: accuracy and consistency of the shortcut on other-language facts, per layer, vs the model."""
    other = sweep.accuracy("other")
    one_language = ["same", "other"]  # both questions of the facts that training stated in one language
    cons = sweep.consistency_frame(one_language)
    model_cons = float(cons[cons.layer == "model"].consistency.iloc[0])
    by_layer = cons[cons.layer != "model"].consistency.to_numpy()
    middle = list(range(1, n_layers))
    best = max(middle, key=lambda layer: float(other[sweep.layers.index(layer)]))
    mid = n_layers // 2
    m = {
        "beta": beta, "betas_used": sweep.betas,
        "model_accuracy_other": sweep.model_accuracy("other"),
        "model_accuracy_seen": sweep.model_accuracy(["both", "same"]),
        "accuracy_other_by_layer": [round(float(v), 3) for v in other],
        "accuracy_seen_by_layer": [round(float(v), 3) for v in sweep.accuracy(["both", "same"])],
        "best_middle_layer": best, "accuracy_other_best": float(other[sweep.layers.index(best)]),
        "middle_layer": mid, "accuracy_other_middle": float(other[sweep.layers.index(mid)]),
        "consistency_model_one_language": model_cons,
        "consistency_one_language_by_layer": [round(float(v), 3) for v in by_layer],
        "consistency_best": float(by_layer[sweep.layers.index(best)]),
        "fit_error_by_layer": [round(v, 3) for v in sweep.fit_error],
    }
    ctx.metric(f"{key}/shortcut_beta_{beta}", m)
    holds = m["accuracy_other_best"] > m["model_accuracy_other"] and m["consistency_best"] > model_cons
    ctx.say(f"- **Shortcut, β = {beta}** (paper: {PAPER['shortcut']}). On other-language facts the model answers "
            f"{m['model_accuracy_other']:.3f}; the shortcut from layer {best} (the best middle layer) {m['accuracy_other_best']:.3f}, "
            f"from layer {mid} {m['accuracy_other_middle']:.3f}; on facts it saw in the question's language it keeps "
            f"{m['accuracy_seen_by_layer'][best]:.3f} (model {m['model_accuracy_seen']:.3f}). Consistency on one-language "
            f"facts: {m['consistency_best']:.3f} vs the model's {model_cons:.3f}. {'Agrees' if holds else 'Disagrees'}.")
    fitted = f"β = {beta}" if beta != "fit" else "β fitted"
    ctx.claim(_sentence(PAPER["shortcut"]), paper=CITATION,
              measured=f"{key}, {fitted}: on other-language facts the shortcut from layer {best} (the best middle "
                       f"layer) answers {m['accuracy_other_best']:.3f} vs the model's {m['model_accuracy_other']:.3f}; "
                       f"consistency on one-language facts {m['consistency_best']:.3f} vs {model_cons:.3f}",
              verdict="reproduced" if holds else "not reproduced",
              note="reproduced where the shortcut beats the model on both accuracy and consistency")
    return m


def run(ctx: StudyContext) -> None:
    cfg = ctx.config
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg["threads"])
    try:
        _run(ctx, cfg)
    finally:
        torch.set_num_threads(threads)


def _run(ctx: StudyContext, cfg: dict[str, Any]) -> None:
    exs = queries(cfg)
    prompts = [ex.text for ex in exs]
    answers = [ex.meta["answers"] for ex in exs]
    languages = [ex.meta["language"] for ex in exs]
    facts = [ex.meta["fact"] for ex in exs]
    groups = [ex.meta["split"] for ex in exs]
    fit = [i for i, g in enumerate(groups) if g == "both"][: cfg["n_fit"]]
    ctx.say(f"{len(set(facts))} facts asked in both languages ({len(prompts)} questions); shortcuts fitted on "
            f"{len(fit)} questions about facts seen in both languages.")
    for name in cfg["models"]:
        model = trilens.load(name)
        key = name.removeprefix("zoo:")
        n_layers = model.n_layers[model.stacks[-1]]
        ctx.say(f"\n## {name} ({model.architecture}, {n_layers} {model.stacks[-1]} layers)\n")
        res = language_lens(model, prompts, answers, languages, facts=facts, k=cfg["k"])
        ctx.table(f"{key}_language_lens", res.layer_frame())
        for kind in ("rank", "share", "cosine"):
            ctx.figure(f"{key}_{kind}", res.figure(kind))
        shared_space(ctx, key, res, n_layers)
        error_anatomy(ctx, key, res, groups, n_layers)
        for beta in cfg["betas"]:
            sweep = shortcut_sweep(model, [prompts[i] for i in fit], prompts, [a[lang] for a, lang in zip(answers, languages)],
                                   languages, facts=facts, groups=groups, beta=beta,
                                   fit_answers=[answers[i][languages[i]] for i in fit], progress=ctx.progress)
            shortcut_effect(ctx, key, sweep, beta, n_layers)
            ctx.table(f"{key}_shortcut_beta_{beta}", sweep.to_frame())
            ctx.figure(f"{key}_shortcut_beta_{beta}", sweep.figure(group="other"))
