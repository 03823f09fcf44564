"""``RelevancyResult``: per input and target step, how relevant each source and prefix token is (relevancy, rollout,
flow)."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InputError
from ..results import Result, register_result

TITLES = {"relevancy": "relevancy (Chefer et al. 2021)", "rollout": "attention rollout (Abnar & Zuidema 2020)",
          "flow": "attention flow (Abnar & Zuidema 2020)"}


@register_result
class RelevancyResult(Result):
    """``maps[method]["source"] [sequence, step, source token]`` and ``["prefix"] [sequence, step, prefix token]``.

    The source is a decoder-only model's prompt, an encoder-decoder's encoder input, or an encoder's whole input (read
    at the mask: one step). The prefix is what the decoder read before the step: the tokens generated (or given) before
    it (decoder-only), or the decoder's input up to the step (encoder-decoder, start token included). Values are zero
    where a step or token does not exist (``valid`` marks the steps).
    """

    def __init__(self, *, maps: dict[str, dict[str, torch.Tensor]], valid: torch.Tensor, source_tokens: list[list[str]],
                 prefix_tokens: list[list[str]], step_tokens: list[list[str]], family: str, info: dict[str, Any]):
        self.maps, self.valid = maps, valid
        self.source_tokens, self.prefix_tokens, self.step_tokens = source_tokens, prefix_tokens, step_tokens
        self.family, self.info = family, info

    @property
    def methods(self) -> list[str]:
        return list(self.maps)

    def map(self, method: str = "relevancy", sequence: int = 0, part: str = "source") -> torch.Tensor:
        """``[step, token]`` of one sequence: its real steps and tokens only."""
        if method not in self.maps:
            raise InputError(f"no {method!r} maps in this result; it has {', '.join(self.maps)}.")
        if part not in ("source", "prefix"):
            raise InputError(f"part must be 'source' or 'prefix', not {part!r}.")
        if not 0 <= sequence < self.valid.shape[0]:
            raise InputError(f"sequence {sequence} does not exist; this result holds {self.valid.shape[0]}.")
        steps = int(self.valid[sequence].sum())
        width = len(self.source_tokens[sequence]) if part == "source" else len(self.prefix_tokens[sequence])
        return self.maps[method][part][sequence, :steps, :width]

    def top_source(self, method: str = "relevancy", k: int = 1) -> list[list[list[int]]]:
        """Per sequence and step, the ``k`` most relevant source positions, most relevant first."""
        out = []
        for b in range(self.valid.shape[0]):
            m = self.map(method, b)
            out.append(m.topk(min(k, m.shape[1]), dim=1).indices.tolist())
        return out

    def to_frame(self):
        """One row per (method, sequence, step, part, position) of real steps and tokens."""
        import numpy as np
        import pandas as pd

        frames = []
        for method in self.maps:
            for b in range(self.valid.shape[0]):
                for part, tokens in (("source", self.source_tokens[b]), ("prefix", self.prefix_tokens[b])):
                    m = self.map(method, b, part)
                    steps, cols = np.divmod(np.arange(m.numel()), m.shape[1])
                    frames.append(pd.DataFrame({
                        "method": method, "sequence": b, "step": steps + 1,
                        "step_token": np.asarray(self.step_tokens[b][: m.shape[0]], dtype=object)[steps], "part": part,
                        "position": cols, "token": np.asarray(tokens, dtype=object)[cols], "value": m.flatten().numpy()}))
        return pd.concat(frames, ignore_index=True)

    def figure(self, method: str | None = None, *, sequence: int = 0, part: str = "source"):
        """Heatmap: generated (or target) steps x source tokens (``part="prefix"``: x the prefix)."""
        from ..viz import attention_pattern

        method = method or self.methods[0]
        m = self.map(method, sequence, part)
        steps = self.step_tokens[sequence][: m.shape[0]]
        tokens = (self.source_tokens if part == "source" else self.prefix_tokens)[sequence]
        return attention_pattern(m, steps, tokens, title=f"{TITLES.get(method, method)} — {self.info.get('model', '')}",
                                 query_title="output step (0 = the first)", key_title=f"{part} token",
                                 value_title="relevance" if method == "relevancy" else "share")

    def _state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        tensors = {f"{m}/{part}": t for m, parts in self.maps.items() for part, t in parts.items()}
        tensors["valid"] = self.valid.to(torch.uint8)
        return {"methods": self.methods, "source_tokens": self.source_tokens, "prefix_tokens": self.prefix_tokens,
                "step_tokens": self.step_tokens, "family": self.family}, tensors

    @classmethod
    def _from_state(cls, data: dict[str, Any], tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> RelevancyResult:
        maps = {m: {p: tensors[f"{m}/{p}"] for p in ("source", "prefix")} for m in data["methods"]}
        return cls(maps=maps, valid=tensors["valid"].bool(), source_tokens=data["source_tokens"],
                   prefix_tokens=data["prefix_tokens"], step_tokens=data["step_tokens"], family=data["family"], info=info)

    def __repr__(self) -> str:
        return (f"RelevancyResult({self.family}, {', '.join(self.methods)}; {self.valid.shape[0]} sequences, "
                f"up to {self.valid.shape[1]} steps)")
