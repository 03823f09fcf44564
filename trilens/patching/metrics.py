"""What a patching run scores, as data: a token's score or its difference from a foil (``TokenScore``), the scores of a
teacher-forced target's steps (``StepScores``), the KL divergence from the clean run (``KLDivergence``), or any function
of the logits.

A metric is resolved once against the run that is patched (``resolve``): which positions it reads, which tokens,
which foils. Every patched run then reads the logits at those positions only (the LM head runs on them alone), one
value per batch row, each row scored with its own pair's rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..capture.objectives import (
    LogitFunction, Objective, ScoredRows, StepScores, TokenScore, at_least_float32, token_scores,
)
from ..errors import InputError
from ..provenance import jsonable

if TYPE_CHECKING:
    from ..inputs import Batch
    from ..model import Model


@dataclass
class KLDivergence:
    """KL(p_clean ‖ p_patched) of the next-token distribution at ``position`` (as ``TokenScore``'s: None is the last
    token, an encoder's mask, the last target token); ``steps=True`` on a teacher-forced target: at every step."""

    position: Any = None
    steps: bool = False

    def describe(self) -> dict[str, Any]:
        return {"metric": "KLDivergence", "position": jsonable(self.position), "steps": self.steps}


METRIC_NAMES = ("logit_diff", "kl")


def as_metric(metric: Any) -> Any:
    """A metric spec from what a user passes: None or ``"logit_diff"`` (the clean prediction's logit minus the
    corrupted prediction's), ``"kl"``, a ``TokenScore`` / ``StepScores`` / ``LogitFunction``, a ``KLDivergence``, or a
    function ``f(logits[, batch]) -> [batch]``."""
    if metric is None or metric == "logit_diff":
        return None
    if metric == "kl":
        return KLDivergence()
    if isinstance(metric, (TokenScore, StepScores, LogitFunction, KLDivergence)):
        return metric
    if isinstance(metric, str):
        raise InputError(f"metric {metric!r} is not known: use one of {', '.join(METRIC_NAMES)}, a TokenScore "
                         "(token=, foil=, score=), StepScores, KLDivergence or a function of the logits.")
    if isinstance(metric, Objective):
        raise InputError(f"{type(metric).__name__} cannot be a patching metric: use TokenScore, StepScores or LogitFunction.")
    if callable(metric):
        return LogitFunction(metric)
    raise InputError(f"metric must be a name, an objective or a function of the logits, not {type(metric).__name__}.")


def describe(metric: Any) -> dict[str, Any]:
    """The metric as JSON-ready data for a result's provenance, its kind under ``"metric"``."""
    if metric is None:
        return {"metric": "logit_diff"}
    facts = dict(metric.describe())
    facts["metric"] = facts.pop("objective", facts.get("metric", type(metric).__name__))
    return facts


@dataclass
class ResolvedMetric:
    """A metric bound to the patched run's pairs: ``rows`` per pair (None for a function of the whole logits), the
    clean run's log-probabilities there (KL), and how steps are reduced (``step``: one step's column, or the mean)."""

    spec: Any
    rows: ScoredRows | None
    score: str
    reference: torch.Tensor | None  # [pair, n, vocab] clean log-probabilities (KL)
    step: int | None

    @property
    def reads_rows(self) -> bool:
        """Whether only the logits at ``rows`` are needed (the LM head can run on those positions alone)."""
        return self.rows is not None

    def rows_of(self, pairs: torch.Tensor) -> ScoredRows:
        return self.rows.take(pairs.cpu())

    def evaluate(self, logits: torch.Tensor, pairs: torch.Tensor, batch: Batch | None = None) -> torch.Tensor:
        """``[rows]`` metric values. ``logits`` are ``[rows, n, vocab]`` at each row's pair's positions (or the whole
        ``[rows, position, vocab]`` for a function of the logits); ``pairs`` names each row's pair."""
        if self.rows is None:
            if logits.requires_grad:
                return at_least_float32(self.spec.values(logits, batch))
            with torch.enable_grad():  # the function's own checks need logits on the autograd path
                return at_least_float32(self.spec.values(logits.detach().requires_grad_(), batch).detach())
        rows = self.rows_of(pairs)
        local = ScoredRows(torch.arange(rows.positions.shape[1]).expand_as(rows.positions), rows.tokens, rows.foils,
                           rows.valid)
        if isinstance(self.spec, KLDivergence):
            ref = self.reference[pairs.to(self.reference.device)].to(logits.device)
            logp = torch.log_softmax(at_least_float32(logits), -1)
            per_step = (ref.exp() * (ref - logp)).sum(-1)
            per_step = per_step.masked_fill(~rows.valid.to(logits.device), 0.0)
        else:
            per_step = token_scores(logits, local, self.score)
        return self._reduce(per_step, rows.valid.to(logits.device))

    def _reduce(self, per_step: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        if self.step is not None:
            return per_step[:, self.step]
        return per_step.sum(1) / valid.sum(1).clamp_min(1)

    def of_run(self, logits: torch.Tensor, batch: Batch, pairs: torch.Tensor | None = None) -> torch.Tensor:
        """``[row]``: the metric of whole runs from their logits ``[row, position, vocab]``; row i is a run of pair
        ``pairs[i]`` (default: row i of the pairs)."""
        pairs = torch.arange(logits.shape[0]) if pairs is None else pairs.cpu()
        if not self.reads_rows:
            return self.evaluate(logits, pairs, batch)
        idx = self.rows_of(pairs).positions.to(logits.device)
        return self.evaluate(logits.gather(1, idx[..., None].expand(-1, -1, logits.shape[-1])), pairs)


def resolve(model: Model, batch: Batch, metric: Any, clean_logits: torch.Tensor, corrupted_logits: torch.Tensor,
            step: int | None) -> ResolvedMetric:
    """Bind ``metric`` (from ``as_metric``) to ``batch``, the pairs' patched run; the clean and corrupted runs'
    logits ``[pair, position, vocab]`` give the default tokens (the clean and the corrupted prediction) and KL's
    reference."""
    if model.hf_model.get_output_embeddings() is None:
        raise InputError("patching scores the model's predictions, and this model has no LM head: load one with its "
                         "head (e.g. BertForMaskedLM rather than BertModel).")

    def logits_at(logits: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda pos: logits.detach().gather(1, pos.to(logits.device)[..., None].expand(-1, -1, logits.shape[-1]))

    if isinstance(metric, LogitFunction):
        if step is not None:
            raise InputError("step= picks a step of a per-step metric (StepScores, KLDivergence(steps=True)).")
        return ResolvedMetric(metric, None, "logit", None, None)
    if metric is None:
        where = TokenScore().resolve(model, batch, logits_at(clean_logits))
        clean_top = _top(clean_logits, where.positions)
        corrupted_top = _top(corrupted_logits, where.positions)
        same = (clean_top == corrupted_top).nonzero().flatten().tolist()
        if same:
            tok = model.tokenizer.convert_ids_to_tokens(int(clean_top[same[0]])) if model.tokenizer else int(clean_top[same[0]])
            raise InputError(f"the clean and corrupted runs of pair {same[0]} both predict {tok!r} at the scored position, "
                             "so the default metric (clean prediction minus corrupted prediction) is 0: pass a metric "
                             "with token= and foil= (TokenScore(token=..., foil=..., score='logit')), or 'kl'.")
        rows = ScoredRows(where.positions, clean_top, corrupted_top, where.valid)
        return _checked(ResolvedMetric(None, rows, "logit", None, _step(step, rows)))
    if isinstance(metric, KLDivergence):
        spec = StepScores() if metric.steps else TokenScore(position=metric.position)
        rows = spec.resolve(model, batch, logits_at(clean_logits))
        idx = rows.positions.to(clean_logits.device)
        ref = torch.log_softmax(at_least_float32(clean_logits.gather(1, idx[..., None].expand(-1, -1, clean_logits.shape[-1]))), -1)
        return _checked(ResolvedMetric(metric, rows, "logprob", ref.detach(), _step(step, rows)))
    rows = metric.resolve(model, batch, logits_at(clean_logits))
    return _checked(ResolvedMetric(metric, rows, metric.score, None, _step(step, rows)))


def _top(logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    idx = positions.to(logits.device)[..., None].expand(-1, -1, logits.shape[-1])
    return logits.gather(1, idx).argmax(-1).cpu()


def _step(step: int | None, rows: ScoredRows) -> int | None:
    if step is None:
        return None
    n = rows.positions.shape[1]
    if not -n <= step < n:
        raise InputError(f"step {step} does not exist: the metric has {n} step{'s' if n != 1 else ''} (0..{n - 1}).")
    return step % n


def _checked(metric: ResolvedMetric) -> ResolvedMetric:
    if metric.step is not None and not bool(metric.rows.valid[:, metric.step].all()):
        bad = int((~metric.rows.valid[:, metric.step]).nonzero()[0])
        raise InputError(f"pair {bad}'s target has no step {metric.step}.")
    return metric
