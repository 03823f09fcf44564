"""Compute for the "Patching" panel: a clean and a corrupted input, attribution patching (AtP) of every cell at once,
and the exact activation-patching sweep in parts (one site kind, then the heads) so the page can show its progress.

The parts together hold the same cells as one ``patching_sweep`` with the default sites; ``merge`` makes them one
``PatchingResult``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from ..patching import PatchingResult, attribution_patching, patching_sweep
from ..patching.cells import CROSS_OUT, DEFAULT_SITES
from ..zoo.tasks import LOGIC_TOKENS, NAMES_A, NAMES_B, NOUNS, REVERSE_ALPHABET, evaluate_formula
from .inputs import AppInput, prepare

if TYPE_CHECKING:
    from ..model import Model

METRICS = {"logit_diff": "logit difference", "kl": "KL(clean ‖ patched)", "steps": "target log-prob (every step)"}
HEADS = "heads"  # the exact sweep's last part: every head's output


@dataclass(frozen=True)
class PatchSettings:
    """What the panel patches: the two inputs (an encoder-decoder's sources, both teacher-forced on ``target``), the
    metric (``token`` minus ``foil`` where given; else ``metric``'s default) and whether heads are patched too."""

    clean: str
    corrupted: str
    target: str = ""
    token: str = ""
    foil: str = ""
    metric: str = "logit_diff"
    heads: bool = False


def corrupt(text: str) -> str:
    """A corrupted copy of a zoo task's input, one token changed so the answer changes: the name of the other class
    (names), the subject's other number (agreement), the first operand whose flip changes the formula's value (logic),
    the first source symbol (reverse); "" where the text is none of these."""
    words = text.split()
    for i, w in enumerate(words):
        if w in NAMES_A or w in NAMES_B:  # names: the other class's name at the same index (one token each)
            words[i] = NAMES_B[NAMES_A.index(w)] if w in NAMES_A else NAMES_A[NAMES_B.index(w)]
            return " ".join(words)
    formula = [w for w in words if w not in ("=", "[MASK]", "<mask>")]
    if formula and all(w in LOGIC_TOKENS for w in formula):
        for i, w in enumerate(words):
            if w in ("T", "F"):
                flipped = words[:i] + ["F" if w == "T" else "T"] + words[i + 1:]
                try:
                    if evaluate_formula(" ".join(formula)) != evaluate_formula(" ".join(x for x in flipped if x in LOGIC_TOKENS)):
                        return " ".join(flipped)
                except ValueError:  # not a whole formula: no answer to change
                    break
        return ""
    if len(words) > 1 and words[-1] == ">" and all(w in REVERSE_ALPHABET for w in words[:-1]):
        other = next(s for s in REVERSE_ALPHABET if s != words[0])
        return " ".join([other] + words[1:])
    singular = {s: p for s, p in NOUNS}
    plural = {p: s for s, p in NOUNS}
    for i, w in enumerate(words[:3]):  # agreement: the subject comes first ("the key to the doors")
        if w in singular or w in plural:
            words[i] = singular.get(w) or plural[w]
            return " ".join(words)
    return ""


def pair(model: Model, settings: PatchSettings) -> tuple[list[Any], list[Any]]:
    """The clean and corrupted model inputs, each checked as the sidebar's input is; an encoder-decoder's corrupted
    source is teacher-forced on the clean one's target."""
    if not settings.corrupted.strip():
        raise InputError("type a corrupted input: the clean one with a token changed (one name for another, T for F), "
                         "of the same token length.")
    clean = prepare(model, AppInput(settings.clean, settings.target))
    corrupted = prepare(model, AppInput(settings.corrupted, clean.target))
    return [clean.model_input], [corrupted.model_input]


def metric(model: Model, settings: PatchSettings) -> Any:
    """The chosen metric: logit difference (``TokenScore`` of the token minus the foil where either is given, else
    the library's default), KL, or every target step's log-prob (minus the foil's)."""
    from .. import StepScores, TokenScore

    token, foil = settings.token.strip() or None, settings.foil.strip() or None
    if settings.metric == "steps":
        if model.family == "encoder":
            raise InputError("an encoder-only model has no target steps: score its mask (logit difference or KL).")
        if token is not None:
            raise InputError("the target log-prob scores each target token itself: leave the token empty (a foil "
                             "is subtracted at every step).")
        return StepScores(foil=foil)
    if settings.metric == "kl":
        if token is not None or foil is not None:
            raise InputError("KL compares whole next-token distributions: leave the token and the foil empty.")
        return "kl"
    return None if token is None and foil is None else TokenScore(token=token, foil=foil, score="logit")


def site_kinds(family: str) -> list[str]:
    """The whole-activation kinds the panel patches (the library's defaults)."""
    return list(DEFAULT_SITES) + ([CROSS_OUT] if family == "encoder-decoder" else [])


def parts(family: str, heads: bool) -> list[str]:
    """The exact sweep's parts, in the order one sweep holds its panels: each site kind, then the heads."""
    return site_kinds(family) + ([HEADS] if heads else [])


def atp(model: Model, settings: PatchSettings) -> PatchingResult:
    """Attribution patching of every cell (the panel's sites, and heads where asked) at once."""
    clean, corrupted = pair(model, settings)
    return attribution_patching(model, clean, corrupted, metric(model, settings), sites=site_kinds(model.family),
                                heads=settings.heads)


def exact_part(model: Model, settings: PatchSettings, part: str) -> PatchingResult:
    """The exact sweep of one part: a site kind, or ``HEADS``."""
    clean, corrupted = pair(model, settings)
    sites, heads = ([], True) if part == HEADS else ([part], False)
    return patching_sweep(model, clean, corrupted, metric(model, settings), sites=sites, heads=heads, progress=False)


def merge(results: list[PatchingResult]) -> PatchingResult:
    """One result of the parts of a sweep (same pairs, metric and direction; each holds its own panels)."""
    first = results[0]
    values = {k: v for r in results for k, v in r.values.items()}
    panels = [p for r in results for p in r.panels]
    params = {**first.info.get("params", {}), "sites": [p.key for p in panels]}
    info = {**first.info, "params": params, "cells": sum(int(r.info.get("cells", 0)) for r in results)}
    return PatchingResult(values=values, panels=panels, m_clean=first.m_clean, m_corrupted=first.m_corrupted,
                          tokens=first.tokens, direction=first.direction, method=first.method, family=first.family,
                          info=info)


def head_panels(result: PatchingResult) -> list[str]:
    """The result's per-head, per-position panels (what the head grid shows)."""
    return [p.key for p in result.panels if p.n_heads is not None and p.per_position]


def head_grid_values(result: PatchingResult, key: str, position: int) -> Any:
    """``[layer, head]`` normalised values (mean over pairs) of panel ``key`` at ``position``, as float32 numpy."""
    m = result.mean(key)
    if not 0 <= position < m.shape[1]:
        raise InputError(f"position {position} does not exist: panel {key} has {m.shape[1]} positions.")
    return m[:, position, :].float().numpy()


def strongest_position(result: PatchingResult, key: str) -> int:
    """The position whose heads change the metric most (largest |normalised value|)."""
    m = result.mean(key).nan_to_num(0.0).abs()
    return int(m.amax((0, 2)).argmax())
