"""Causal localisation on the zoo: does activation patching find the position that carries a known cause, and how
close do attribution patching (AtP, AtP*) and edge attribution (EAP-IG) come to it?

Each case pairs a clean input with a corrupted one that differs in one token whose effect is known by construction
(``trilens.zoo.tasks``); the metric is the logit of the clean answer minus the corrupted answer's:
- names (zoo:gpt, zoo:bert): the name swapped for one of the other class; she vs he at the pronoun slot;
- agreement (zoo:gpt, zoo:bert): the subject's number changed, the attractor nouns kept; "is" vs "are" (etc.);
- reverse (zoo:gpt, zoo:t5): one source symbol changed at position j; output step t = N - 1 - j reads it;
- logic (zoo:gpt, zoo:bert, zoo:t5): one literal flipped so that the formula's value flips; T vs F.
Pairs come in groups of one shape (template, distractor count, changed position, formula shape and literal), so a
group's mean heatmap has one source position and one read-out position. Per case: where the exact sweep's resid_pre
peaks (per pair and layer, and in the group's mean heatmap) against those positions, AtP and AtP* against the exact
sweep (``PatchingResult.compare``), the time of each method, and the EAP-IG circuit size that recovers
``circuit_recover`` of the metric (``circuit_size``).
"""

from __future__ import annotations

import itertools
import os
import random
import time
from typing import Any, NamedTuple

import pandas as pd
import torch

import trilens
from trilens.capture.objectives import TokenScore
from trilens.errors import InputError
from trilens.patching import attribution_patching, edge_attribution, patching_sweep
from trilens.study import StudyContext
from trilens.viz import curves
from trilens.zoo import tasks as T

ROLES = ("source", "read", "attractor", "other", "none")
QK = ("q", "k", "cross_q", "cross_k")  # the per-head kinds where AtP* differs from AtP (the QK fix)
# the method papers the study tests, as trilens's README cites them
PAPERS = {"patching": "Meng et al. 2022 (causal tracing); Wang et al. 2023 (path patching, IOI)",
          "atp": "Nanda 2023 (attribution patching)", "atp*": "Kramár et al. 2024 (AtP*)",
          "eap-ig": "Hanna et al. 2024 (EAP-IG)"}
ATP_SPEARMAN = 0.7  # AtP ranks the cells as the exact sweep does where its Spearman over the mean heatmap reaches this
SMALL_CIRCUIT = 0.5  # a circuit is small where it recovers ``circuit_recover`` with at most this share of the edges
LOCALISED = 0.9  # activation patching localises a case where this share of its peaks is at the changed token or read-out


class Pair(NamedTuple):
    """One clean/corrupted pair: the answer tokens, the decoder step scored (encoder-decoders) and, per stack, the
    positions that play each role (``source``: the changed token; ``read``: where the answer is read out)."""

    clean: Any
    corrupted: Any
    token: str
    foil: str
    roles: dict[str, dict[str, list[int]]]
    group: str
    step: int | None = None


class CaseRun:
    """Per group of a case: its pairs, the exact sweep, AtP and AtP* results and the circuit size; each method's
    seconds."""

    def __init__(self, pairs: list[Pair]) -> None:
        self.parts = [[p for p in pairs if p.group == g] for g in dict.fromkeys(p.group for p in pairs)]
        self.exact, self.atp, self.star, self.circuits = [], [], [], []
        self.seconds = {"exact": 0.0, "atp": 0.0, "atp*": 0.0}


# -- pairs ------------------------------------------------------------------------------------------------------------
def _names(family: str, cfg: dict, rng: random.Random, n: int) -> list[Pair]:
    """Held-out (name, template) pairs as the clean input, a name of the other class in the corrupted one."""
    pool = {}
    for e in T.names(4000, seed=cfg["seed"], split="test"):
        if e.label is not None:
            pool.setdefault(e.meta["template"], {}).setdefault(e.label, []).append(e)
    out = []
    for template in cfg["names_templates"][: cfg["groups"]["names"]]:
        for i in range(n):
            cls = "AB"[i % 2]
            seen = list({e.meta["name"]: e for e in pool[template][cls]}.values())
            e = seen[(i // 2) % len(seen)]
            other = rng.choice(T.NAMES_B if cls == "A" else T.NAMES_A)
            words = e.meta["full"].split()
            at, cut = words.index(e.meta["name"]), e.meta["pronoun_index"]
            swapped = words[:at] + [other] + words[at + 1:]
            foil = "he" if e.target == "she" else "she"
            if family == "encoder":  # the whole sentence, the pronoun masked
                texts = [" ".join(w[:cut] + ["[MASK]"] + w[cut + 1:]) for w in (words, swapped)]
                roles = {"encoder": {"source": [at + 1], "read": [cut + 1]}}
            else:
                texts = [" ".join(w[:cut]) for w in (words, swapped)]
                roles = {"decoder": {"source": [at], "read": [cut - 1]}}
            out.append(Pair(*texts, e.target, foil, roles, f"template {template}"))
    return out


def _agreement(family: str, cfg: dict, rng: random.Random, n: int) -> list[Pair]:
    """Held-out sentences with an attractor; the corrupted one has the subject in the other number."""
    number = {pl: sg for sg, pl in T.NOUNS} | {sg: pl for sg, pl in T.NOUNS}
    plural = {pl for _, pl in T.NOUNS}
    pool = [e for e in T.agreement(4000, seed=cfg["seed"], split="test", max_distractors=2)  # every distractor attracts
            if all((w in plural) != (e.label == "pl") for w in e.text.split()[4::3])]
    out = []
    for k in cfg["agreement_distractors"][: cfg["groups"]["agreement"]]:
        chosen = [e for e in pool if e.meta["distractors"] == k and k > 0][:n]
        for e in chosen:
            words = e.text.split()
            swapped = [words[0], number[words[1]]] + words[2:]
            pair = next(p for p in T.VERBS if e.target in p)
            foil = pair[1] if e.target == pair[0] else pair[0]
            attractors = [i for i in range(4, len(words), 3) if (words[i] in plural) != (words[1] in plural)]
            off = 1 if family == "encoder" else 0
            if family == "encoder":
                texts = [" ".join(w + ["[MASK]", e.meta["adjective"]]) for w in (words, swapped)]
                read = len(words) + 1
            else:
                texts, read = [" ".join(w) for w in (words, swapped)], len(words) - 1
            roles = {family_stack(family): {"source": [1 + off], "read": [read],
                                            "attractor": [a + off for a in attractors]}}
            out.append(Pair(*texts, e.target, foil, roles, f"{k} distractor{'s' if k > 1 else ''}"))
    return out


def _reverse(family: str, cfg: dict, rng: random.Random, n: int) -> list[Pair]:
    """Held-out strings of ``reverse_length`` symbols; the corrupted one has another symbol at source position j."""
    length = cfg["reverse_length"]
    strings = [e.text.split() for e in T.reverse(n * len(cfg["reverse_sources"]), seed=cfg["seed"], split="test",
                                                 lengths=(length, length))]
    out = []
    for g, j in enumerate(cfg["reverse_sources"][: cfg["groups"]["reverse"]]):
        t = length - 1 - j
        for syms in strings[g * n:(g + 1) * n]:
            other = rng.choice([s for s in T.REVERSE_ALPHABET if s != syms[j]])
            changed = syms[:j] + [other] + syms[j + 1:]
            target = list(reversed(syms))
            if family == "encoder-decoder":  # the clean reversal teacher-forced in both runs; step t scored
                texts = [(" ".join(s) + " >", " ".join(target)) for s in (syms, changed)]
                roles = {"encoder": {"source": [j]}, "decoder": {"read": [t]}}
                out.append(Pair(*texts, syms[j], other, roles, f"j={j}, t={t}", step=t))
            else:  # the prompt and the first t reversed symbols: the last position predicts step t
                texts = [" ".join(s + [">"] + target[:t]) for s in (syms, changed)]
                roles = {"decoder": {"source": [j], "read": [length + t]}}
                out.append(Pair(*texts, syms[j], other, roles, f"j={j}, t={t}"))
    return out


def _logic(family: str, cfg: dict, rng: random.Random, n: int) -> list[Pair]:
    """Formula shapes of ``logic_depth`` (as the task draws them); per shape and literal, every assignment where
    flipping that literal flips the value; the groups with the most such assignments first."""
    shapes = list(dict.fromkeys(" ".join("X" if w in "TF" else w for w in e.text.split())
                                for e in T.logic(200, seed=cfg["seed"], depths=(cfg["logic_depth"],), split="test")))
    groups = []
    for shape in shapes:
        words = shape.split()
        slots = [i for i, w in enumerate(words) if w == "X"]
        for i in slots:
            found = []
            for values in itertools.product("TF", repeat=len(slots)):
                clean = list(words)
                for s, v in zip(slots, values):
                    clean[s] = v
                flipped = clean[:i] + ["F" if clean[i] == "T" else "T"] + clean[i + 1:]
                a, b = T.evaluate_formula(" ".join(clean)), T.evaluate_formula(" ".join(flipped))
                if a != b:
                    found.append((clean, flipped, "T" if a else "F", "T" if b else "F"))
            groups.append((shape, i, found))
    groups.sort(key=lambda g: -len(g[2]))  # stable: the task's order among equals
    out = []
    for shape, i, found in groups[: cfg["groups"]["logic"]]:
        for clean, flipped, answer, other in found[:n]:
            if family == "encoder-decoder":  # the clean answer teacher-forced in both runs; step 0 scored
                texts = [(" ".join(w) + " =", answer) for w in (clean, flipped)]
                out.append(Pair(*texts, answer, other, {"encoder": {"source": [i]}, "decoder": {"read": [0]}},
                                f"{shape} @ {i}", step=0))
            else:
                off = 1 if family == "encoder" else 0
                texts = [" ".join(w) + (" = [MASK]" if family == "encoder" else " =") for w in (clean, flipped)]
                read = len(clean) + 1 + off if family == "encoder" else len(clean)
                out.append(Pair(*texts, answer, other, {family_stack(family): {"source": [i + off], "read": [read]}},
                                f"{shape} @ {i}"))
    return out


BUILDERS = {"names": _names, "agreement": _agreement, "reverse": _reverse, "logic": _logic}


def family_stack(family: str) -> str:
    return "encoder" if family == "encoder" else "decoder"


# -- edge attribution -------------------------------------------------------------------------------------------------
def circuit_size(model, clean, corrupted, metric, cfg: dict, progress: bool = False) -> dict[str, Any]:
    """EAP-IG: the fewest edges (of the sizes ``edge_attribution`` measures) whose circuit recovers ``circuit_recover``
    of the metric, with every other edge patched to its corrupted value; or why the model was refused."""
    start = time.perf_counter()
    try:
        circuit = edge_attribution(model, clean, corrupted, metric, method="eap-ig", steps=cfg["eap_steps"],
                                   progress=progress)
    except InputError as err:
        return {"status": f"refused: {str(err).split(';')[0]}"}
    edges = circuit.edges_to_recover(cfg["circuit_recover"])
    below = [n for n in circuit.sizes if edges is not None and n < edges]  # a geometric grid: the answer lies between
    return {"status": "ok", "edges": edges, "more_than": below[-1] if below else None, "of_edges": circuit.n_edges,
            "seconds": round(time.perf_counter() - start, 2),
            "recovered": {int(n): round(float(v), 4) for n, v in zip(circuit.sizes, circuit.recovered().tolist())},
            "top_edges": [f"{e['sender']}->{e['receiver']}" for e in circuit.top_edges(5)]}


# -- one case ---------------------------------------------------------------------------------------------------------
def _run_case(ctx: StudyContext, model, pairs: list[Pair]) -> CaseRun:
    cfg, run = ctx.config, CaseRun(pairs)
    heads = cfg["heads"] or False
    for part in run.parts:
        clean, corrupted = [p.clean for p in part], [p.corrupted for p in part]
        step = [p.step for p in part] if part[0].step is not None else None
        metric = TokenScore(token=[p.token for p in part], foil=[p.foil for p in part], position=step, score="logit")
        start = time.perf_counter()
        run.exact.append(patching_sweep(model, clean, corrupted, metric, heads=heads, batch_size=cfg["batch_size"],
                                        progress=ctx.progress))
        run.seconds["exact"] += time.perf_counter() - start
        for method, kept in (("atp", run.atp), ("atp*", run.star)):
            best = float("inf")
            for _ in range(cfg["timing_repeats"]):  # the fastest of a few: they take well under a second
                start = time.perf_counter()
                result = attribution_patching(model, clean, corrupted, metric, method=method, heads=heads)
                best = min(best, time.perf_counter() - start)
            kept.append(result)
            run.seconds[method] += best
        if cfg["circuit"]:
            size = circuit_size(model, clean, corrupted, metric, cfg, ctx.progress)
            run.circuits.append({"group": part[0].group, **size})
    return run


def _role(roles: dict[str, list[int]], position: int) -> str:
    return next((r for r in ("source", "read", "attractor") if position in roles.get(r, [])), "other")


def _peak(values: torch.Tensor, floor: float) -> int | None:
    """The position of the largest normalised value, or None where no position reaches ``floor``."""
    v = torch.nan_to_num(values, nan=float("-inf"))
    return int(v.argmax()) if float(v.max()) >= floor else None


def _peaks(run: CaseRun, floor: float) -> tuple[list[dict], list[dict]]:
    """Per pair and per group mean: each stack's resid_pre peak position per layer and the role it plays."""
    per_pair, per_group = [], []
    for result, part in zip(run.exact, run.parts):
        group = part[0].group
        for stack in part[0].roles:
            key = f"{stack}.resid_pre"
            norm, mean = result.normalised(key), result.mean(key)
            for layer in range(norm.shape[1]):
                at = _peak(mean[layer], floor)
                per_group.append({"group": group, "stack": stack, "layer": layer, "position": at,
                                  "token": None if at is None else result.tokens[stack][0][at],
                                  "value": None if at is None else round(float(mean[layer, at]), 3),
                                  "role": "none" if at is None else _role(part[0].roles[stack], at)})
                for b, p in enumerate(part):
                    n_real = len(result.tokens[stack][b])
                    at = _peak(norm[b, layer, :n_real], floor)
                    per_pair.append({"group": group, "stack": stack, "layer": layer,
                                     "token": None if at is None else result.tokens[stack][b][at],
                                     "role": "none" if at is None else _role(p.roles[stack], at)})
    return per_pair, per_group


def _agreement_rows(run: CaseRun, k: int) -> list[dict]:
    """AtP and AtP* against the exact sweep, per panel and over all cells, weighted by cells over the groups."""
    rows = []
    for method, results in (("atp", run.atp), ("atp*", run.star)):
        parts = [exact.compare(approx, k=k) for exact, approx in zip(run.exact, results)]
        for panel in parts[0]:
            got = [p[panel] for p in parts if panel in p]
            rows.append({"method": method, "panel": panel, "cells": sum(g["cells"] for g in got),
                         **{m: _weighted(got, m) for m in ("spearman", "pearson", "top_k_recall")}})
        if method == "atp*":
            recall = [_graddrop_recall(e, s, k) for e, s in zip(run.exact, results)]
            recall = [r for r in recall if r is not None]
            rows.append({"method": "atp* GradDrop |effect|", "panel": "all", "cells": rows[-1]["cells"],
                         "top_k_recall": round(sum(recall) / len(recall), 4) if recall else None})
    return rows


def _weighted(parts: list[dict], measure: str) -> float | None:
    """The cell-weighted mean of ``measure`` over the groups where it is defined (a panel whose cells are all equal
    has no rank correlation)."""
    got = [(g[measure], g["cells"]) for g in parts
           if g["cells"] > 1 and g[measure] is not None and g[measure] == g[measure]]
    cells = sum(c for _, c in got)
    return round(sum(v * c for v, c in got) / cells, 4) if cells else None


def _graddrop_recall(exact, star, k: int) -> float | None:
    """Share of the exact sweep's top-k cells of the mean over pairs (by |mean change|) among the top k of AtP*'s
    GradDrop magnitudes (mean over pairs)."""
    if star.magnitudes is None or not any(bool(v.nan_to_num(0.0).any()) for v in star.magnitudes.values()):
        return None  # none, or all zero (zoo:bert: see the README)
    a = torch.cat([exact.effect(key).nanmean(0).flatten() for key in exact.keys])
    b = torch.cat([star.magnitudes[key].nanmean(0).flatten() for key in exact.keys])
    ok = torch.isfinite(a) & torch.isfinite(b)
    a, b = a[ok], b[ok]
    k = min(k, int(a.numel()))
    return len(set(a.abs().topk(k).indices.tolist()) & set(b.topk(k).indices.tolist())) / k


def _at_source(run: CaseRun) -> float:
    """AtP's mean normalised value of the layer-0 resid_pre cell at the changed token, averaged over groups (exactly 1
    for the exact sweep: nothing else differs there)."""
    values = []
    for result, part in zip(run.atp, run.parts):
        stack, roles = next((s, r) for s, r in part[0].roles.items() if "source" in r)
        values.append(float(result.mean(f"{stack}.resid_pre")[0, roles["source"][0]]))
    return round(sum(values) / len(values), 4)


def _cross(run: CaseRun) -> dict[str, Any] | None:
    """An encoder-decoder's cross-attention at the scored step: the mean normalised cross_attn_out per decoder layer
    and the head (``cross_z``) that restores most, averaged over groups."""
    if "decoder.cross_attn_out" not in run.exact[0].keys:
        return None
    steps = [part[0].roles["decoder"]["read"][0] for part in run.parts]
    out = torch.stack([r.mean("decoder.cross_attn_out")[:, t] for r, t in zip(run.exact, steps)]).mean(0)
    found: dict[str, Any] = {"cross_attn_out_by_layer": [round(float(v), 4) for v in out]}
    if "decoder.cross_z" in run.exact[0].keys:
        heads = torch.stack([r.mean("decoder.cross_z")[:, t] for r, t in zip(run.exact, steps)]).mean(0)
        layer, head = divmod(int(heads.argmax()), heads.shape[1])
        found["top_cross_head"] = {"layer": layer, "head": head, "value": round(float(heads[layer, head]), 4)}
    return found


def _shares(per_pair: list[dict]) -> pd.DataFrame:
    """Per stack and layer: the share of pairs whose peak plays each role."""
    frame = pd.DataFrame(per_pair)
    share = frame.groupby(["stack", "layer"])["role"].value_counts(normalize=True).unstack(fill_value=0.0)
    return share.reindex(columns=list(ROLES), fill_value=0.0).round(4).reset_index()


def _summarise_case(case: str, run: CaseRun, pairs: list[Pair], cfg: dict) -> tuple[dict, pd.DataFrame, list[dict]]:
    per_pair, per_group = _peaks(run, cfg["peak_floor"])
    shares = _shares(per_pair)
    frame = pd.DataFrame(per_pair)
    found = frame[frame.role != "none"]
    m_clean = torch.cat([r.m_clean for r in run.exact])
    m_corrupted = torch.cat([r.m_corrupted for r in run.exact])
    handoff = {}
    for stack, part in shares.groupby("stack"):
        if {"source", "read"} <= {r for p in pairs for r in p.roles[stack]}:
            later = part[part.read > part.source].layer.tolist()
            handoff[stack] = int(later[0]) if later else None
    mean_peaks: dict[str, list[dict]] = {}
    for g in per_group:
        mean_peaks.setdefault(f"{g['group']} / {g['stack']}", []).append(
            {k: g[k] for k in ("layer", "position", "token", "value", "role")})
    others = found[found.role == "other"].token.value_counts()
    agreement = _agreement_rows(run, cfg["top_k"])
    pick = {(r["method"], r["panel"]): r for r in agreement}
    summary = {
        "pairs": len(pairs), "groups": len(run.exact),
        "answers_right": round(float(((m_clean > 0) & (m_corrupted < 0)).double().mean()), 4),
        "m_clean": round(float(m_clean.mean()), 3), "m_corrupted": round(float(m_corrupted.mean()), 3),
        "peak_at_known": round(float(found.role.isin(["source", "read"]).mean()), 4) if len(found) else None,
        "peak_at_source": round(float((found.role == "source").mean()), 4) if len(found) else None,
        "peak_at_read": round(float((found.role == "read").mean()), 4) if len(found) else None,
        "peak_at_attractor": round(float((found.role == "attractor").mean()), 4) if len(found) else None,
        "no_peak": round(float((frame.role == "none").mean()), 4),
        "handoff_layer": handoff,
        "mean_peaks": mean_peaks,
        "other_peak_tokens": {str(k): int(v) for k, v in others.items()},
        "mean_peak_at_known": round(sum(g["role"] in ("source", "read") for g in per_group)
                                    / max(1, sum(g["role"] != "none" for g in per_group)), 4),
        "agreement": agreement,
        **{f"{m}_{measure}": pick[(m, "all")][measure] for m in ("atp", "atp*")
           for measure in ("spearman", "top_k_recall")},
        "graddrop_top_k_recall": pick[("atp* GradDrop |effect|", "all")]["top_k_recall"],
        **{f"{m}_qk_{x}": _weighted([r for r in agreement if r["method"] == m and r["panel"].split(".")[-1] in QK], x)
           for m in ("atp", "atp*") for x in ("spearman", "pearson")},
        "atp_at_source_layer0": _at_source(run),
        "cells": sum(int(sum(torch.isfinite(v).sum() for v in r.values.values())) for r in run.exact),
        "seconds": {k: round(v, 2) for k, v in run.seconds.items()},
        "cross_attention": _cross(run),
        "circuit": run.circuits,
        "circuit_edges": [c.get("edges") for c in run.circuits if c["status"] == "ok"],
    }
    if run.circuits and all(c["status"] == "ok" for c in run.circuits):
        summary["seconds"]["eap-ig"] = round(sum(c["seconds"] for c in run.circuits), 2)
    summary["speedup_atp"] = round(run.seconds["exact"] / max(run.seconds["atp"], 1e-9), 1)
    return summary, shares.assign(case=case), agreement


# -- the study --------------------------------------------------------------------------------------------------------
def run(ctx: StudyContext) -> None:
    cfg = ctx.config
    threads = torch.get_num_threads()
    if cfg["threads"]:  # on a shared machine, processes with 2 threads each on 2 cores stall each other
        torch.set_num_threads(cfg["threads"])
    try:
        ctx.metric("machine", {"threads": torch.get_num_threads(),
                               "load_average_at_start": round(os.getloadavg()[0], 2)})
        _run_all(ctx)
    finally:
        torch.set_num_threads(threads)


def _run_all(ctx: StudyContext) -> None:
    cfg = ctx.config
    models: dict[str, Any] = {}
    case_rows, share_frames, agreement_rows = [], [], []
    for case in cfg["cases"]:
        name, task = case.split("/")
        model = models.setdefault(name, trilens.load(f"zoo:{name}"))
        per_group = -(-cfg["pairs"] // cfg["groups"][task])
        pairs = BUILDERS[task](model.family, cfg, random.Random(f"patching-{cfg['seed']}-{case}"), per_group)
        run_ = _run_case(ctx, model, pairs)
        summary, shares, agreement = _summarise_case(case, run_, pairs, cfg)
        ctx.metric(case, summary)
        share_frames.append(shares)
        agreement_rows += [{"case": case, **r} for r in agreement]
        case_rows.append({"case": case, **{k: v for k, v in summary.items() if not isinstance(v, (dict, list))},
                          **{f"seconds_{k}": v for k, v in summary["seconds"].items()}})
        _figures(ctx, case, run_, shares)
        slug = case.replace("/", "_")
        for method, results in (("exact", run_.exact), ("atp", run_.atp), ("atp*", run_.star)):
            results[0].save(ctx.out / "results" / f"{slug}_{method.replace('*', '_star')}")
    ctx.metric("machine", {**ctx.metrics["machine"], "load_average_at_end": round(os.getloadavg()[0], 2)})
    cases = pd.DataFrame(case_rows)
    ctx.table("cases", cases)
    ctx.table("peaks_by_layer", pd.concat(share_frames, ignore_index=True))
    ctx.table("agreement", pd.DataFrame(agreement_rows))
    _summary(ctx, cases)
    _claims(ctx)


def _figures(ctx: StudyContext, case: str, run: CaseRun, shares: pd.DataFrame) -> None:
    """The first group's exact and AtP heatmaps of each stack's residual stream; the peak roles by layer."""
    slug = case.replace("/", "_")
    for stack in run.exact[0].tokens:
        key = f"{stack}.resid_pre"
        ctx.figure(f"{slug}_{stack}_exact", run.exact[0].figure(key))
        ctx.figure(f"{slug}_{stack}_atp", run.atp[0].figure(key))
    if "decoder.cross_attn_out" in run.exact[0].keys:
        ctx.figure(f"{slug}_cross_attn_out_exact", run.exact[0].figure("decoder.cross_attn_out"))
    for stack, part in shares.groupby("stack"):
        series = {role: part[role].tolist() for role in ROLES if part[role].any()}
        ctx.figure(f"{slug}_{stack}_peaks", curves(part.layer.tolist(), series, title=f"{case}: where each pair's "
                   f"{stack} resid_pre peaks", x_title="layer (resid_pre)", y_title="share of pairs"))


def _summary(ctx: StudyContext, cases: pd.DataFrame) -> None:
    quick = ctx.config["pairs"] < 16
    ctx.say(f"{'Quick' if quick else 'Full'} run, about {ctx.config['pairs']} pairs per case, "
            f"{ctx.metrics['machine']['threads']} thread(s).")
    ctx.say()
    ctx.say("peak@known: share of (pair, layer) resid_pre peaks at the changed token or at the read-out position; "
            "Spearman / top-k: AtP and AtP* against the exact sweep over every cell.")
    ctx.say()
    cols = ["case", "pairs", "answers_right", "peak_at_known", "peak_at_source", "peak_at_read", "peak_at_attractor",
            "mean_peak_at_known", "atp_spearman", "atp_top_k_recall", "atp_at_source_layer0",
            "atp_qk_pearson", "atp*_qk_pearson", "graddrop_top_k_recall", "cells", "speedup_atp"]
    ctx.say("```\n" + cases[cols].to_string(index=False) + "\n```")
    for case in cases.case:
        m = ctx.metrics[case]
        ctx.say(f"\n## {case}: handoff layer {m['handoff_layer']}; seconds {m['seconds']}")
        for group, peaks in m["mean_peaks"].items():
            ctx.say(f"- {group}: " + " | ".join(
                p["role"] if p["position"] is None else f"{p['role']} {p['position']}:{p['token']} ({p['value']})"
                for p in peaks))
        if m["cross_attention"]:
            ctx.say(f"- cross-attention at the scored step: {m['cross_attention']}")
        statuses = {c["status"] for c in m["circuit"]}
        if statuses == {"ok"}:
            ctx.say(f"- EAP-IG circuit recovering {ctx.config['circuit_recover']:.0%}: "
                    + "; ".join(f"{c['group']}: {c['edges']} of {c['of_edges']} edges" for c in m["circuit"]))
        elif statuses:
            ctx.say(f"- EAP-IG circuit: {'; '.join(sorted(statuses))}")


def _span(values: list[float], fmt: str = ".2f") -> str:
    """The range of ``values``, as "low–high" (one number where they are equal; "none" where there are none)."""
    if not values:
        return "none"
    low, high = format(min(values), fmt), format(max(values), fmt)
    return low if low == high else f"{low}–{high}"


def _claims(ctx: StudyContext) -> None:
    """Each method paper's claim against the numbers of every case."""
    cases = {case: ctx.metrics[case] for case in ctx.config["cases"]}
    n = len(cases)
    known = {case: m["peak_at_known"] for case, m in cases.items() if m["peak_at_known"] is not None}
    if known:
        found = [case for case, share in known.items() if share >= LOCALISED]
        ctx.claim("Activation patching localises a behaviour: patching the residual stream moves the output where it "
                  "carries the information, at the token that holds it and then at the position that reads it out.",
                  paper=PAPERS["patching"],
                  measured="share of resid_pre peaks (every pair and layer) at the changed token or the read-out "
                           "position: " + "; ".join(f"{case} {share:.2f}" for case, share in known.items())
                           + f"; at least {LOCALISED} in {len(found)} of {len(known)} cases",
                  verdict="reproduced" if len(found) > len(known) / 2 else "not reproduced",
                  note=f"reproduced where most cases reach {LOCALISED}; logic's cause is spread over operators and "
                       "brackets by construction (README)")
    spearman = [m["atp_spearman"] for m in cases.values() if m["atp_spearman"] is not None]
    recall = [m["atp_top_k_recall"] for m in cases.values() if m["atp_top_k_recall"] is not None]
    speedup = [m["speedup_atp"] for m in cases.values()]
    at_source = [m["atp_at_source_layer0"] for m in cases.values()]
    ranks = len(spearman) == n and min(spearman) >= ATP_SPEARMAN and min(speedup) > 1
    ctx.claim("Attribution patching, a gradient estimate from one forward and one backward pass, approximates every "
              "cell's activation-patching effect at once, much faster than patching each cell.", paper=PAPERS["atp"],
              measured=f"over {n} cases AtP's Spearman with the exact sweep is {_span(spearman)} (top-"
                       f"{ctx.config['top_k']} recall {_span(recall)}), {_span(speedup, '.0f')}× faster; its value at "
                       f"the changed token in layer 0 (exactly 1) is {_span(at_source)}",
              verdict="reproduced" if ranks else "not reproduced",
              note=f"reproduced where every case's Spearman is at least {ATP_SPEARMAN} and AtP is faster")
    qk = {case: (m["atp_qk_pearson"], m["atp*_qk_pearson"]) for case, m in cases.items()
          if m["atp_qk_pearson"] is not None and m["atp*_qk_pearson"] is not None}
    if qk:
        better = sum(star > plain for plain, star in qk.values())
        ctx.claim("AtP misjudges query and key cells where attention saturates; recomputing their attention pattern "
                  "(the QK fix) brings them closer to activation patching.", paper=PAPERS["atp*"],
                  measured=f"q/k Pearson with the exact sweep goes from {_span([a for a, _ in qk.values()])} (AtP) to "
                           f"{_span([b for _, b in qk.values()])} (AtP*), higher in {better} of {len(qk)} cases",
                  verdict="reproduced" if better > len(qk) / 2 else "not reproduced",
                  note="reproduced where AtP*'s q/k Pearson is higher in most cases")
    dropped = {case: (m["atp_top_k_recall"], m["graddrop_top_k_recall"]) for case, m in cases.items()
               if m["atp_top_k_recall"] is not None and m["graddrop_top_k_recall"] is not None}
    claim = ("GradDrop (the backward pass repeated with each layer's gradient dropped) finds the cells that AtP misses "
             "where contributions cancel.")
    if dropped:
        plain = sum(a for a, _ in dropped.values()) / len(dropped)
        drop = sum(b for _, b in dropped.values()) / len(dropped)
        ctx.claim(claim, paper=PAPERS["atp*"],
                  measured=f"in the {len(dropped)} cases where it runs, GradDrop's top-{ctx.config['top_k']} recall of "
                           f"the exact sweep's cells is {drop:.2f} on average, AtP's {plain:.2f}",
                  verdict="reproduced" if drop > plain else "not reproduced",
                  note="reproduced where GradDrop's mean recall beats AtP's; not run on post-norm zoo:bert")
    else:
        ctx.claim(claim, paper=PAPERS["atp*"], measured="GradDrop ran in no case", verdict="not comparable",
                  note="a post-norm model's (zoo:bert) layer contributions cannot be dropped alone")
    shares = {}
    for case, m in cases.items():
        sizes = [c["edges"] / c["of_edges"] for c in m["circuit"] if c["status"] == "ok" and c["edges"] is not None]
        if sizes:
            shares[case] = sorted(sizes)[len(sizes) // 2]  # the median group (the upper one of an even count)
    if shares:
        small = [case for case, share in shares.items() if share <= SMALL_CIRCUIT]
        ctx.claim("EAP-IG finds faithful circuits: a small share of the edges, with every other edge patched, "
                  "recovers most of the model's behaviour.", paper=PAPERS["eap-ig"],
                  measured=f"the circuit recovering {ctx.config['circuit_recover']:.0%} of the metric uses "
                           f"{_span(list(shares.values()), '.0%')} of the edges (median group per case); at most "
                           f"{SMALL_CIRCUIT:.0%} in {len(small)} of {len(shares)} cases",
                  verdict="reproduced" if len(small) > len(shares) / 2 else "not reproduced",
                  note=f"reproduced where most cases need at most {SMALL_CIRCUIT:.0%} of the edges; the paper's "
                       "comparison with EAP is not run")
