"""The linear shortcut from every layer: accuracy and cross-lingual consistency per layer against the full model."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from ..errors import InputError
from ..provenance import provenance
from ..results import Result, register_result
from .languages import answer_table, consistency, parallel_facts, read_layers, slot_states
from .shortcut import PAPER_BETA, LinearShortcut
from .unembed import Unembed

if TYPE_CHECKING:
    from ..model import Model

MODEL = "model"  # the row of the full model in frames


def shortcut_sweep(model: Model, fit_prompts: Sequence[str] | None, prompts: Sequence[str], answers: Sequence[str],
                   languages: Sequence[str], *, facts: Sequence[Hashable] | None = None,
                   groups: Sequence[str] | None = None, layers: Sequence[int] | None = None,
                   beta: float | str = PAPER_BETA, fit_answers: Sequence[str] | None = None,
                   shortcuts: Sequence[LinearShortcut] | None = None, batch_size: int = 64,
                   progress: bool = True) -> ShortcutSweepResult:
    """Fit a shortcut from each of ``layers`` (default: every layer) on ``fit_prompts`` and answer ``prompts`` with it.

    Args:
        shortcuts: shortcuts already fitted, to evaluate instead (``fit_prompts``, ``layers`` and ``beta`` unused).
        answers: each prompt's gold answer in its own language (one token; a dict language -> answer is read at the
            prompt's language).
        languages: each prompt's language; ``facts``: which fact each asks (default: the i-th prompt of each language).
        groups: an optional label per prompt (e.g. whether training saw the fact in this language) to break accuracy
            down by.
        beta: the shortcut's scale (the paper's 2.25), or ``"fit"`` per layer (see ``LinearShortcut.fit``).
    """
    stack = model.stacks[-1]
    n_layers = model.n_layers[stack]
    if shortcuts is not None:
        for sc in shortcuts:
            sc._check(model)
        layers = [sc.layer for sc in shortcuts]
    elif not fit_prompts:
        raise InputError("no fitting prompts: pass fit_prompts (the paper fits on at most 25) or fitted shortcuts.")
    layers = list(range(n_layers + 1)) if layers is None else [int(x) for x in layers]
    languages = [str(x) for x in languages]
    if not len(prompts) == len(answers) == len(languages):
        raise InputError(f"{len(prompts)} prompts, {len(answers)} answers and {len(languages)} languages: give one "
                         "answer and one language per prompt.")
    if groups is not None and len(groups) != len(prompts):
        raise InputError(f"{len(groups)} groups for {len(prompts)} prompts: give one group label per prompt.")
    fact_ids = parallel_facts(languages, facts)
    own = [a[lang] if isinstance(a, Mapping) else a for a, lang in zip(answers, languages)]
    _, ids = answer_table(model, own, languages)
    ids = ids.max(1).values  # one answer per prompt: its own language's (-1 in every other column)
    states = slot_states(model, prompts, batch_size=batch_size)
    hidden, betas, fit_error = [states[-1]], [], []  # the model's own last layer, then each shortcut's output
    for k, layer in enumerate(tqdm(layers, desc="shortcut sweep", disable=not progress or shortcuts is not None)):
        shortcut = shortcuts[k] if shortcuts is not None else LinearShortcut.fit(
            model, fit_prompts, layer=layer, beta=beta, answers=fit_answers, progress=False)
        hidden.append(shortcut.hidden(states[layer]))
        betas.append(shortcut.beta)
        fit_error.append(float(shortcut.fit_error.mean()))
    ranks = read_layers(Unembed(model, stack), torch.stack(hidden), ids[:, None], k=1)[0][..., 0]
    model_rank, rank = ranks[0], ranks[1:]
    params = {"layers": layers, "beta": betas if shortcuts is not None else beta,
              "n_fit": len(shortcuts[0].fit_prompts) if shortcuts is not None else len(fit_prompts), "stack": stack}
    return ShortcutSweepResult(
        layers=layers, n_layers=n_layers, rank=rank, model_rank=model_rank, betas=betas,
        fit_error=fit_error, languages=languages, facts=[str(f) for f in fact_ids],
        groups=list(groups) if groups is not None else None, prompts=list(prompts),
        info=provenance(model, "linear shortcut sweep", params, len(prompts)))


@register_result
class ShortcutSweepResult(Result):
    """Per shortcut layer and prompt, the rank of the gold answer (0 = answered); ``model_rank`` for the full model."""

    def __init__(self, *, layers: list[int], n_layers: int, rank: torch.Tensor, model_rank: torch.Tensor,
                 betas: list[float], fit_error: list[float], languages: list[str], facts: list[str],
                 groups: list[str] | None, prompts: list[str], info: dict[str, Any]):
        self.layers, self.n_layers, self.rank, self.model_rank = layers, n_layers, rank, model_rank
        self.betas, self.fit_error = betas, fit_error
        self.languages, self.facts, self.groups, self.prompts = languages, facts, groups, prompts
        self.info = info

    def correct(self) -> torch.Tensor:
        """``[layer, prompt]``: the shortcut from each layer answers the prompt."""
        return self.rank == 0

    def model_correct(self) -> torch.Tensor:
        """``[prompt]``: the full model answers the prompt."""
        return self.model_rank == 0

    def _select(self, language: str | None, group: str | Sequence[str] | None) -> list[int]:
        groups = [group] if isinstance(group, str) else group
        if groups is not None and not self.groups:
            raise InputError("this sweep has no groups: pass groups= to shortcut_sweep to break results down by them.")
        return [i for i, (lang, g) in enumerate(zip(self.languages, self.groups or [None] * len(self.languages)))
                if (language is None or lang == language) and (groups is None or g in groups)]

    def accuracy(self, group: str | Sequence[str] | None = None, language: str | None = None) -> torch.Tensor:
        """``[layer]``: the shortcut's accuracy from each layer over the prompts of ``group`` (and ``language``)."""
        return self.correct()[:, self._select(language, group)].float().mean(1)

    def model_accuracy(self, group: str | Sequence[str] | None = None, language: str | None = None) -> float:
        """The full model's accuracy over the same prompts."""
        return float(self.model_correct()[self._select(language, group)].float().mean())

    def to_frame(self):
        """One row per (layer, language, group): the shortcut's accuracy and the full model's on the same prompts,
        and the consistency (over all groups) between each pair of languages; layer ``"model"`` is the full model."""
        import pandas as pd

        groups = sorted(set(self.groups)) if self.groups else [None]
        rows = []
        correct, model_correct = self.correct(), self.model_correct()
        for lang in sorted(set(self.languages)):
            for group in groups:
                idx = self._select(lang, group)
                if not idx:
                    continue
                for k, layer in enumerate(self.layers):
                    rows.append({"layer": layer, "language": lang, "group": group or "all", "n": len(idx),
                                 "accuracy": float(correct[k, idx].float().mean()),
                                 "model_accuracy": float(model_correct[idx].float().mean())})
        return pd.DataFrame(rows)

    def consistency_frame(self, group: str | Sequence[str] | None = None):
        """One row per (layer, language pair): consistency of the shortcut, and of the full model (layer "model"), over
        the prompts of ``group`` (a fact's prompts in different groups count where every one of them is selected)."""
        import pandas as pd

        idx = self._select(None, group)
        sub = ([self.facts[i] for i in idx], [self.languages[i] for i in idx])
        rows = [{"layer": MODEL, "pair": f"{a}-{b}", "consistency": v}
                for (a, b), v in consistency(self.model_correct()[idx], *sub).items()]
        for k, layer in enumerate(self.layers):
            rows += [{"layer": layer, "pair": f"{a}-{b}", "consistency": v}
                     for (a, b), v in consistency(self.correct()[k, idx], *sub).items()]
        return pd.DataFrame(rows)

    def figure(self, group: str | None = None):
        """Accuracy of the shortcut per layer and language (lines), the full model's (dotted), and consistency."""
        from ..viz import curves

        idx_all = self._select(None, group)
        series, dash = {}, {}
        for lang in sorted(set(self.languages)):
            idx = self._select(lang, group)
            series[f"shortcut, {lang}"] = self.correct()[:, idx].float().mean(1).numpy()
            series[f"model, {lang}"] = [float(self.model_correct()[idx].float().mean())] * len(self.layers)
            dash[f"model, {lang}"] = "dot"
        cons = self.consistency_frame(group)
        for pair in cons["pair"].unique():
            per = cons[(cons.pair == pair) & (cons.layer != MODEL)]
            series[f"consistency {pair}"] = per["consistency"].to_numpy()
            dash[f"consistency {pair}"] = "dash"
        title = f"linear shortcut to layer {self.n_layers}" + (f" ({group}: {len(idx_all)} prompts)" if group else "")
        return curves(self.layers, series, dash=dash, title=title, x_title="shortcut from layer", y_title="accuracy")

    def __repr__(self) -> str:
        acc = self.correct().float().mean(1)
        k = int(acc.argmax())
        return (f"ShortcutSweepResult: {len(self.prompts)} prompts, layers {self.layers[0]}-{self.layers[-1]}; best "
                f"layer {self.layers[k]} ({float(acc[k]):.2f}) vs the model {float(self.model_correct().float().mean()):.2f}")

    def _state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return ({"layers": self.layers, "n_layers": self.n_layers, "betas": self.betas, "fit_error": self.fit_error,
                 "languages": self.languages, "facts": self.facts, "groups": self.groups, "prompts": self.prompts},
                {"rank": self.rank, "model_rank": self.model_rank})

    @classmethod
    def _from_state(cls, data: dict[str, Any], tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> ShortcutSweepResult:
        return cls(rank=tensors["rank"], model_rank=tensors["model_rank"], info=info, **data)
