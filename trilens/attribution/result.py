"""``AttributionResult``: per input and generated (or given) step, how much each source and target-prefix token
contributed to the step's score; step scores beside them; the raw attributions kept, so any aggregation can be redone."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InputError
from ..results import Result, register_result, renamed
from . import aggregate as agg

PARTS = ("source", "target")


@register_result
class AttributionResult(Result):
    """``raw[part] [input, step, position(, d)]`` for ``part`` in ``source`` / ``target``.

    The source is a decoder-only model's prompt, an encoder-decoder's encoder input or an encoder's whole input; the
    target is the prefix the decoder read: the tokens generated before the step (decoder-only) or the decoder's input
    (start token, then the target up to the step; encoder-decoders). ``valid [input, step]`` marks real steps;
    ``step_scores[name] [input, step]``; ``deltas [input, step]`` the convergence delta where the method has one.

    Aggregation (``aggregate``) is a view: ``hidden`` ("l2" or "sum" over the hidden dimension), ``words`` (sub-words
    summed into words) and ``normalise`` (None or "l1" per step, over source and target together)."""

    def __init__(self, *, raw: dict[str, torch.Tensor], has_hidden: bool, valid: torch.Tensor,
                 source_tokens: list[list[str]], target_tokens: list[list[str]], step_tokens: list[list[str]],
                 step_scores: dict[str, torch.Tensor], deltas: torch.Tensor | None, family: str, info: dict[str, Any],
                 hidden: str = "l2", words: bool = False, normalise: str | None = None):
        agg.check(hidden, normalise)
        self.raw, self.has_hidden, self.valid = raw, has_hidden, valid
        self.source_tokens, self.target_tokens, self.step_tokens = source_tokens, target_tokens, step_tokens
        self.step_scores, self.deltas, self.family, self.info = step_scores, deltas, family, info
        self.hidden, self.words, self.normalise = hidden, words, normalise

    @property
    def method(self) -> str:
        return self.info.get("params", {}).get("method", "")

    @property
    def n_inputs(self) -> int:
        return self.valid.shape[0]

    def aggregate(self, hidden: str | None = None, *, words: bool | None = None,
                  normalise: str | None | bool = False) -> AttributionResult:
        """The same raw attributions, aggregated another way (arguments left out keep their current setting;
        ``normalise=None`` turns normalisation off)."""
        return AttributionResult(raw=self.raw, has_hidden=self.has_hidden, valid=self.valid,
                                 source_tokens=self.source_tokens, target_tokens=self.target_tokens,
                                 step_tokens=self.step_tokens, step_scores=self.step_scores, deltas=self.deltas,
                                 family=self.family, info=self.info, hidden=hidden or self.hidden,
                                 words=self.words if words is None else words,
                                 normalise=self.normalise if normalise is False else normalise)

    def _check(self, sequence: int, part: str = "source") -> None:
        if part not in PARTS:
            raise InputError(f"part must be 'source' or 'target', not {part!r}.")
        if not 0 <= sequence < self.n_inputs:
            raise InputError(f"sequence {sequence} does not exist; this result holds {self.n_inputs}.")

    def _groups(self, sequence: int, part: str) -> list[list[int]]:
        tokens = self._raw_tokens(sequence, part)
        return agg.word_groups(tokens) if self.words else [[i] for i in range(len(tokens))]

    def _raw_tokens(self, sequence: int, part: str) -> list[str]:
        return (self.source_tokens if part == "source" else self.target_tokens)[sequence]

    def tokens(self, sequence: int = 0, part: str = "source") -> list[str]:
        """The labels of ``scores``' columns: tokens, or words where ``words`` is on."""
        self._check(sequence, part)
        raw = self._raw_tokens(sequence, part)
        return [agg.word_text(raw, g) for g in self._groups(sequence, part)]

    def scores(self, sequence: int = 0, part: str = "source") -> torch.Tensor:
        """``[step, token]`` of one sequence (its real steps and tokens), aggregated as this result says."""
        self._check(sequence, part)
        return self._both(sequence)[part]

    def _both(self, sequence: int) -> dict[str, torch.Tensor]:
        """``scores`` of both parts (normalisation needs them together)."""
        steps = int(self.valid[sequence].sum())
        parts = {}
        for p in PARTS:
            width = len(self._raw_tokens(sequence, p))
            values = agg.over_hidden(self.raw[p][sequence, :steps, :width].float(), self.hidden, self.has_hidden)
            parts[p] = agg.sum_groups(values, self._groups(sequence, p)) if width else values
        if self.normalise == "l1":
            parts = dict(zip(PARTS, agg.l1_normalise([parts[p] for p in PARTS])))
        return parts

    def top_source(self, sequence: int = 0, k: int = 1) -> list[list[int]]:
        """Per step of ``sequence``, the ``k`` source positions (words) with the highest score, highest first."""
        s = self.scores(sequence, "source")
        return s.topk(min(k, s.shape[1]), dim=1).indices.tolist()

    step_frame = renamed("table", "step_frame")

    def table(self):
        """One row per (sequence, step): the step's token and its step scores (and convergence delta)."""
        import pandas as pd

        rows = []
        for b in range(self.n_inputs):
            for t in range(int(self.valid[b].sum())):
                row = {"sequence": b, "step": t + 1, "step_token": self.step_tokens[b][t]}
                row.update({name: float(v[b, t]) for name, v in self.step_scores.items()})
                if self.deltas is not None:
                    row["delta"] = float(self.deltas[b, t])
                rows.append(row)
        return pd.DataFrame(rows)

    def to_frame(self):
        """One row per (sequence, step, part, position) of real steps and tokens, aggregated as set."""
        import numpy as np
        import pandas as pd

        frames = []
        for b in range(self.n_inputs):
            both = self._both(b)
            for part in PARTS:
                m, tokens = both[part], self.tokens(b, part)
                if m.numel() == 0:
                    continue
                steps, cols = np.divmod(np.arange(m.numel()), m.shape[1])
                frames.append(pd.DataFrame({
                    "sequence": b, "step": steps + 1, "step_token": np.asarray(self.step_tokens[b], dtype=object)[steps],
                    "part": part, "position": cols, "token": np.asarray(tokens, dtype=object)[cols],
                    "value": m.flatten().numpy()}))
        return pd.concat(frames, ignore_index=True)

    def figure(self, sequence: int = 0):
        """Heatmap of source and target-prefix tokens x generated steps, with the step scores underneath."""
        from ..viz import attribution_map

        self._check(sequence)
        both = self._both(sequence)
        src, tgt = both["source"], both["target"]
        steps = int(self.valid[sequence].sum())
        return attribution_map(torch.cat([src, tgt], 1).T, self.tokens(sequence, "source") + self.tokens(sequence, "target"),
                               self.step_tokens[sequence][:steps], n_source=src.shape[1],
                               step_scores={k: v[sequence, :steps].tolist() for k, v in self.step_scores.items()},
                               title=f"{self.method} attributions — {self.info.get('model', '')}",
                               value_title=self.value_title)

    @property
    def value_title(self) -> str:
        """What a score is: the hidden-dimension aggregation (or a perturbation's score change) and the normalisation."""
        how = {"l2": "L2 norm", "sum": "sum"}[self.hidden] if self.has_hidden else "score change"
        return how + (", L1-normalised" if self.normalise == "l1" else "")

    def _state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        tensors = {f"raw/{p}": t.contiguous() for p, t in self.raw.items()}
        tensors.update({f"step/{k}": v for k, v in self.step_scores.items()})
        tensors["valid"] = self.valid.to(torch.uint8)
        if self.deltas is not None:
            tensors["deltas"] = self.deltas
        return {"has_hidden": self.has_hidden, "source_tokens": self.source_tokens, "target_tokens": self.target_tokens,
                "step_tokens": self.step_tokens, "step_scores": list(self.step_scores), "family": self.family,
                "hidden": self.hidden, "words": self.words, "normalise": self.normalise}, tensors

    @classmethod
    def _from_state(cls, data: dict[str, Any], tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> AttributionResult:
        return cls(raw={p: tensors[f"raw/{p}"] for p in PARTS}, has_hidden=data["has_hidden"],
                   valid=tensors["valid"].bool(), source_tokens=data["source_tokens"],
                   target_tokens=data["target_tokens"], step_tokens=data["step_tokens"],
                   step_scores={k: tensors[f"step/{k}"] for k in data["step_scores"]}, deltas=tensors.get("deltas"),
                   family=data["family"], info=info, hidden=data["hidden"], words=data["words"],
                   normalise=data["normalise"])

    def __repr__(self) -> str:
        return (f"AttributionResult({self.method}, {self.family}; {self.n_inputs} sequences, up to {self.valid.shape[1]} "
                f"steps; aggregated: {self.hidden}{', words' if self.words else ''}"
                f"{', l1' if self.normalise else ''})")
