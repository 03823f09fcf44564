"""Objectives as data: the scalar (or one scalar per teacher-forced step) whose gradient ``model.gradients`` takes.

``TokenScore``: the log-probability, probability or logit of a token at one position per input, or its difference
from a foil token (contrastive, Yin & Neubig 2022). ``StepScores``: the same score for every token of a teacher-forced
target (one objective per step, all from one forward pass). ``LogitFunction``: any function of the logits.

Token objectives are resolved against a batch into ``ScoredRows`` (where, which token, which foil); their scores are
read from the logits at those rows only.
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError
from ..provenance import jsonable

if TYPE_CHECKING:
    from ..inputs import Batch
    from ..model import Model

SCORES = ("logprob", "prob", "logit")


@dataclass
class ScoredRows:
    """Per input row and objective column: the scored position (padded coordinates), the token, the foil."""

    positions: torch.Tensor  # [batch, n] long
    tokens: torch.Tensor  # [batch, n] long
    foils: torch.Tensor | None  # [batch, n] long
    valid: torch.Tensor  # [batch, n] bool (False: padding steps, scored as 0)

    def take(self, *index: Any) -> ScoredRows:
        """The rows (and columns) ``index`` selects, as tensor indexing does (``take(rows)``, ``take(b, t)``)."""
        def cut(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[index]

        return ScoredRows(cut(self.positions), cut(self.tokens), cut(self.foils), cut(self.valid))


class Objective:
    """Base class. ``per_step`` objectives give one scalar per column (teacher-forced step) and row."""

    per_step = False

    def describe(self) -> dict[str, Any]:
        """The objective as JSON-ready data, for a result's provenance."""
        return {"objective": type(self).__name__}

    def for_rows(self, rows: slice, n_rows: int) -> Objective:
        """The objective for rows ``rows`` of ``n_rows`` inputs: settings given per input are cut to those rows."""
        cut = {f.name: list(_listed(getattr(self, f.name)))[rows] for f in fields(self)
               if _is_per_input(getattr(self, f.name), n_rows)}
        return replace(self, **cut) if cut else self


def _listed(value: Any) -> Any:
    return value.tolist() if torch.is_tensor(value) else value


def _is_per_input(value: Any, n_rows: int) -> bool:
    return (isinstance(value, (list, tuple)) or torch.is_tensor(value) and value.dim() > 0) and len(value) == n_rows


def _check_score(score: str) -> None:
    if score not in SCORES:
        raise InputError(f"score must be one of {', '.join(SCORES)}, not {score!r}.")


def token_id(model: Model, token: int | str) -> int:
    """One vocabulary id from an id or a token string (a string must be one token of the model's vocabulary; one the
    tokenizer can only encode as its unknown token is refused)."""
    if not isinstance(token, str):
        try:
            if isinstance(token, bool):
                raise TypeError
            token = operator.index(token)  # ints, numpy ints, 0-d integer tensors
        except TypeError:
            raise InputError(f"a target or foil token is an id or a string, not {type(token).__name__}.") from None
        if not 0 <= token < model.vocab_size:
            raise InputError(f"token id {token} is outside this model's vocabulary (0..{model.vocab_size - 1}).")
        return token
    tok = model.tokenizer
    if tok is None:
        raise InputError("this model has no tokenizer: give target tokens as ids.")
    tid = tok.convert_tokens_to_ids(token)
    if tid is None or tid == tok.unk_token_id and token != tok.unk_token:
        ids = tok(token, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise InputError(f"{token!r} is {len(ids)} tokens for this tokenizer ({tok.convert_ids_to_tokens(ids)}); "
                             "a target must be a single token: pass its id or one of those tokens.")
        tid = ids[0]
        if tid == tok.unk_token_id:
            raise InputError(f"the tokenizer cannot encode {token!r}: it becomes {tok.unk_token!r}. Use a token of "
                             "this model's vocabulary (or its id).")
    return int(tid)


def _per_row(value: Any, n_rows: int, what: str) -> list[Any]:
    """``value`` for every row: a single value repeated, or a list with one value per row."""
    if isinstance(value, (list, tuple)) or torch.is_tensor(value) and value.dim() > 0:
        values = value.tolist() if torch.is_tensor(value) else list(value)
        if len(values) != n_rows:
            raise InputError(f"{len(values)} {what}s for {n_rows} inputs: give one {what}, or one per input.")
        return values
    return [value] * n_rows


def token_position(p: Any, length: int, row: int) -> int:
    """Position ``p`` (0 first, -1 last) among an input's ``length`` real tokens, as an index from its first one."""
    try:
        p = operator.index(p)
    except TypeError:
        raise InputError(f"a position is an int (0 first, -1 last) or 'mask', not {p!r}.") from None
    rel = p + length if p < 0 else p
    if not 0 <= rel < length:
        raise InputError(f"position {p} does not exist in input {row}, which has {length} tokens.")
    return rel


def scored_stack(model: Model) -> str:
    """The stack whose logits objectives read: the decoder (decoder-only and encoder-decoder) or the encoder."""
    return "encoder" if model.family == "encoder" else "decoder"


def _next_tokens(model: Model, batch: Batch, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The input's own token at each scored position (the next one in a decoder-only text, the teacher-forced
    target in an encoder-decoder) and whether there is one."""
    rows = torch.arange(positions.shape[0])[:, None]
    if model.family == "encoder-decoder":
        labels = batch.labels.cpu()
        tok = labels[rows, positions]
        return tok.clamp_min(0), tok >= 0
    if model.family == "decoder":
        ids, mask = batch.input_ids.cpu(), batch.attention_mask.cpu().bool()
        nxt = (positions + 1).clamp_max(ids.shape[1] - 1)
        has = (positions + 1 < ids.shape[1]) & mask[rows, nxt]
        return ids[rows, nxt], has
    return torch.zeros_like(positions), torch.zeros_like(positions, dtype=torch.bool)


@dataclass
class TokenScore(Objective):
    """The score of ``token`` at ``position`` of each input (minus the foil's score, if ``foil`` is given).

    Args:
        token: an id or token string, or one per input. None: the input's own next token where it has one (the
            next token of a decoder-only text, the target token of an encoder-decoder pair), else the model's top
            prediction there (e.g. at an encoder's ``[MASK]``).
        position: of the scored stack (the decoder's target for encoder-decoders), relative to each sequence's real
            tokens (0 first, -1 last), or one per input; ``"mask"`` the first mask token (masked LMs). None: the last
            token (decoder-only: it predicts the next token), the mask token (encoders), the last target token.
        score: ``"logprob"`` (default), ``"prob"`` or ``"logit"``.
        foil: a contrasting token (or one per input): the objective becomes score(token) - score(foil).
    """

    token: Any = None
    position: Any = None
    score: str = "logprob"
    foil: Any = None

    def __post_init__(self) -> None:
        _check_score(self.score)

    def describe(self) -> dict[str, Any]:
        return {"objective": "TokenScore", "token": jsonable(self.token), "position": jsonable(self.position),
                "score": self.score, "foil": jsonable(self.foil)}

    def resolve(self, model: Model, batch: Batch, logits_at: Callable[[torch.Tensor], torch.Tensor]) -> ScoredRows:
        """Rows for ``batch``; ``logits_at(positions)`` gives detached logits there (for a predicted token)."""
        stack = scored_stack(model)
        mask = batch.masks[stack].cpu()
        n = mask.shape[0]
        lengths = mask.sum(1)
        first = mask.float().argmax(1)
        pos = []
        for r, p in enumerate(_per_row(self.position, n, "position")):
            if p is None:
                p = "mask" if model.family == "encoder" else -1
            if p == "mask":
                tok = model.tokenizer
                hits = (batch.ids[stack][r].cpu() == getattr(tok, "mask_token_id", None)).nonzero().flatten() if tok else []
                if len(hits) == 0:
                    raise InputError(f"input {r} has no mask token to score; mark the slot with {getattr(tok, 'mask_token', '[MASK]')} "
                                     "or pass position=.")
                pos.append(int(hits[0]))
                continue
            pos.append(int(first[r]) + token_position(p, int(lengths[r]), r))
        positions = torch.tensor(pos, dtype=torch.long)[:, None]
        if self.token is None:
            own, has = _next_tokens(model, batch, positions)
            predicted = logits_at(positions).argmax(-1).cpu()
            tokens = torch.where(has, own, predicted)
        else:
            tokens = torch.tensor([token_id(model, t) for t in _per_row(self.token, n, "token")])[:, None]
        foils = None if self.foil is None else torch.tensor([token_id(model, t) for t in _per_row(self.foil, n, "foil")])[:, None]
        return ScoredRows(positions, tokens, foils, torch.ones_like(positions, dtype=torch.bool))


@dataclass
class StepScores(Objective):
    """One objective per step of a teacher-forced target: the score of each token given the ones before it.

    Encoder-decoders: step t scores target token t (all target tokens). Decoder-only: step t scores the token at
    position ``start + t`` of each text, read at the position before it; ``start`` is the first scored token
    (default 1: every token after the first; pass each prompt's length to score only a continuation).

    Args:
        score: ``"logprob"`` (default), ``"prob"`` or ``"logit"``.
        foil: a contrasting token for every step (or one per input, or one list of per-step foils per input).
        start: decoder-only: the position of the first scored token (an int, or one per input).
    """

    score: str = "logprob"
    foil: Any = None
    start: Any = None

    per_step = True

    def __post_init__(self) -> None:
        _check_score(self.score)

    def describe(self) -> dict[str, Any]:
        return {"objective": "StepScores", "score": self.score, "foil": jsonable(self.foil), "start": jsonable(self.start)}

    def resolve(self, model: Model, batch: Batch, logits_at: Callable[[torch.Tensor], torch.Tensor]) -> ScoredRows:
        if model.family == "encoder":
            raise InputError("per-step objectives score a teacher-forced target: use a decoder-only or encoder-decoder "
                             "model (for an encoder, score its mask slot with TokenScore).")
        n = batch.input_ids.shape[0]
        if model.family == "encoder-decoder":
            if self.start is not None:
                raise InputError("start= is for decoder-only texts; an encoder-decoder scores every target token.")
            labels = batch.labels.cpu()
            positions = torch.arange(labels.shape[1]).expand(n, -1).clone()
            tokens, valid = labels.clamp_min(0), labels >= 0
        else:
            mask = batch.attention_mask.cpu().bool()
            if bool((~mask[:, 0] & mask.any(1)).any()):
                raise InputError("per-step objectives need right-padded texts (trilens encodes them so).")
            lengths = mask.sum(1)
            starts = torch.tensor([1 if s is None else s for s in _per_row(self.start, n, "start")])
            if bool(((starts < 1) | (starts >= lengths)).any()):
                bad = int(((starts < 1) | (starts >= lengths)).nonzero()[0])
                raise InputError(f"start {int(starts[bad])} leaves no token to score in input {bad} ({int(lengths[bad])} "
                                 "tokens); start must be at least 1 (the first token has no context) and below the length.")
            n_steps = int((lengths - starts).max())
            steps = torch.arange(n_steps)[None, :]
            targets = starts[:, None] + steps  # the scored token's position
            valid = targets < lengths[:, None]
            positions = (targets - 1).clamp_max(mask.shape[1] - 1)  # read at the position before it
            tokens = batch.input_ids.cpu().gather(1, targets.clamp_max(mask.shape[1] - 1))
        foils = None
        if self.foil is not None:
            steps = valid.sum(1).tolist()
            foils = torch.zeros_like(positions)
            for r, row in enumerate(_per_row(self.foil, n, "foil")):
                row = _listed(row)
                if isinstance(row, (list, tuple)):
                    if len(row) != steps[r]:
                        raise InputError(f"input {r} has {steps[r]} scored steps but {len(row)} per-step foils: give one "
                                         "foil per step, or one foil for all of them.")
                    foils[r, : len(row)] = torch.tensor([token_id(model, f) for f in row], dtype=torch.long)
                else:
                    foils[r] = token_id(model, row)
        return ScoredRows(positions, tokens, foils, valid)


@dataclass
class GivenRows(Objective):
    """Per-step objectives at rows already resolved (positions, tokens, foils): the score of each ``rows`` column."""

    rows: ScoredRows
    score: str = "logprob"

    per_step = True

    def __post_init__(self) -> None:
        _check_score(self.score)

    def describe(self) -> dict[str, Any]:
        return {"objective": "GivenRows", "score": self.score, "contrastive": self.rows.foils is not None}

    def resolve(self, model: Model, batch: Batch, logits_at: Callable[[torch.Tensor], torch.Tensor]) -> ScoredRows:
        if self.rows.positions.shape[0] != batch.input_ids.shape[0]:
            raise InputError(f"{self.rows.positions.shape[0]} rows of scored steps for a batch of {batch.input_ids.shape[0]}.")
        return self.rows


@dataclass
class LogitFunction(Objective):
    """Any function of the scored stack's logits ``[batch, position, vocab]`` (and the ``Batch``, if it takes two
    arguments) -> one value per input ``[batch]``. Gradients are of the sum over inputs."""

    fn: Callable[..., torch.Tensor]
    name: str = ""

    def describe(self) -> dict[str, Any]:
        return {"objective": "LogitFunction", "name": self.name or getattr(self.fn, "__name__", "function")}

    def values(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        out = self.fn(logits, batch) if _takes_two(self.fn) else self.fn(logits)
        if not torch.is_tensor(out) or tuple(out.shape) != (logits.shape[0],):
            raise InputError(f"the objective function must return one value per input ([{logits.shape[0]}], e.g. "
                             f"logits[:, -1, token]; gradients are of their sum), not {type(out).__name__} "
                             f"{tuple(getattr(out, 'shape', ()))}.")
        if not out.requires_grad:
            raise InputError("the objective function's value does not depend on the logits (no gradient flows).")
        return out


def _takes_two(fn: Callable) -> bool:
    """Whether ``fn`` accepts (logits, batch) rather than (logits) alone."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32, or in float64 where it already is (scores of a float64 model keep their precision)."""
    return t if t.dtype == torch.float64 else t.float()


def token_scores(logits: torch.Tensor, rows: ScoredRows, score: str) -> torch.Tensor:
    """``[batch, n]`` objective values from the logits at the scored rows (0 where a step is not valid)."""
    idx = rows.positions.to(logits.device)
    picked = at_least_float32(logits.gather(1, idx[..., None].expand(-1, -1, logits.shape[-1])))  # [batch, n, vocab]
    value = _score(picked, rows.tokens.to(logits.device), score)
    if rows.foils is not None:
        value = value - _score(picked, rows.foils.to(logits.device), score)
    return value.masked_fill(~rows.valid.to(logits.device), 0.0)


def _score(picked: torch.Tensor, tokens: torch.Tensor, score: str) -> torch.Tensor:
    logit = picked.gather(-1, tokens[..., None])[..., 0]
    if score == "logit":
        return logit
    logprob = logit - torch.logsumexp(picked, -1)
    return logprob if score == "logprob" else logprob.exp()
