"""``Generation``: generated tokens, every step's activations, and a full-sequence ``ActivationCache``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..atomic import read_saved
from ..errors import InputError
from ..inputs import token_strings
from ..results import Result, group, register_result
from ..sites import PATTERN_KINDS, Site
from .cache import ActivationCache

if TYPE_CHECKING:
    from ..inputs import Batch
    from ..model import Model


def _assemble(name: str, site: Site, steps: list[dict[str, torch.Tensor]], length: int) -> torch.Tensor:
    """Join one site's per-step tensors into a full-sequence tensor."""
    parts = [s[name] for s in steps if name in s]
    if site.kind not in PATTERN_KINDS or site.kind.startswith("cross"):
        return torch.cat(parts, dim=2 if site.kind in PATTERN_KINDS else 1)
    b, h = parts[0].shape[:2]
    full = parts[0].new_zeros((b, h, length, length))
    row = 0
    for p in parts:  # step t: queries row..row+q, keys 0..row+q (causal, so the rest stays 0)
        q, k = p.shape[2], p.shape[3]
        full[:, :, row:row + q, :k] = p
        row += q
    return full


def _live(generated: torch.Tensor, eos: list[int]) -> torch.Tensor:
    """``[batch, T]`` True where the generated token was produced before the row's first EOS (inclusive)."""
    is_eos = torch.isin(generated, torch.tensor(eos, dtype=generated.dtype)) if eos else torch.zeros_like(generated, dtype=torch.bool)
    done_before = torch.cumsum(is_eos.int(), dim=1) - is_eos.int()
    return done_before == 0


@register_result
class Generation(Result):
    """The result of ``model.generate``: sequences, texts, per-step and assembled activations."""

    def __init__(self, *, sequences: torch.Tensor, prompt_length: int, generated_ids: torch.Tensor, texts: list[str],
                 logits: torch.Tensor | None, steps: list[dict[str, torch.Tensor]], encoder: dict[str, torch.Tensor],
                 cache: ActivationCache, info: dict[str, Any], live: torch.Tensor | None = None):
        self.sequences = sequences
        self.live = live  # [batch, step]: the token came before the row's first end-of-sequence (inclusive)
        self.prompt_length = prompt_length
        self.generated_ids = generated_ids
        self.texts = texts
        self.logits = logits
        self.steps = steps
        self.encoder = encoder
        self.cache = cache
        self.info = info

    @classmethod
    def from_run(cls, model: Model, batch: Batch, out: Any, steps: list[dict[str, torch.Tensor]],
                 once: dict[str, torch.Tensor], names: list[str], info: dict[str, Any]) -> Generation:
        seq = out.sequences.cpu()
        decoder_only = model.family == "decoder"
        start = batch.input_ids.shape[1] if decoder_only else 1
        gen = seq[:, start:].clone()
        n_new = gen.shape[1]
        eos = model.hf_model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        live = _live(gen, eos)
        fed = start + n_new - 1  # the last generated token is never fed back
        prompt_mask = batch.attention_mask.cpu().bool() if decoder_only else torch.ones((seq.shape[0], 1), dtype=torch.bool)
        dec_mask = torch.cat([prompt_mask, live[:, : n_new - 1]], dim=1)[:, :fed]
        sites = {n: model.site_index.site(n) for n in names}
        acts = {n: _assemble(n, sites[n], steps, fed) for n in names if n not in once}
        acts.update(once)
        masks = {"decoder": dec_mask}
        ids = {"decoder": seq[:, :fed]}
        if not decoder_only:
            masks["encoder"], ids["encoder"] = batch.attention_mask.cpu().bool(), batch.input_ids.cpu()
        tok = model.tokenizer
        tokens = token_strings(tok, ids)
        texts = tok.batch_decode(gen.masked_fill(~live, model.pad_token_id), skip_special_tokens=True) if tok else []
        cache = ActivationCache(acts, sites, stacks=model.stacks, masks=masks, tokens=tokens, ids=ids, info=info)
        logits = torch.stack(out.logits, dim=1).cpu() if getattr(out, "logits", None) else None
        per_step = [{n: t for n, t in s.items()} for s in steps]
        return cls(sequences=seq, prompt_length=start, generated_ids=gen, texts=texts, logits=logits,
                   steps=per_step, encoder=dict(once), cache=cache, info=info, live=live)

    @property
    def n_steps(self) -> int:
        return len(self.steps)

    def step(self, t: int) -> dict[str, torch.Tensor]:
        """The activations captured by forward pass ``t`` (0 = the prompt, then one per new token)."""
        if not -len(self.steps) <= t < len(self.steps):
            raise InputError(f"step {t} does not exist; this generation ran {len(self.steps)} steps.")
        return self.steps[t]

    def to_frame(self):
        """One row per (sequence, step): the generated token, its probability, whether the row was still live."""
        import pandas as pd

        probs = self.logits.float().softmax(-1) if self.logits is not None else None
        rows = []
        for b in range(self.generated_ids.shape[0]):
            for t, tid in enumerate(self.generated_ids[b].tolist()):
                rows.append({"sequence": b, "step": t, "token_id": tid,
                             "token": self.cache.tokens("decoder")[b][self.prompt_length + t] if self.prompt_length + t < len(self.cache.tokens("decoder")[b]) else None,
                             "prob": float(probs[b, t, tid]) if probs is not None else None})
        return pd.DataFrame(rows)

    def figure(self, sequence: int | None = None):
        """The probability of each generated token, per step (one line per sequence, or only ``sequence``)."""
        from ..viz import curves

        if self.logits is None:
            raise InputError("this generation kept no logits, so there are no token probabilities to draw.")
        frame = self.to_frame()
        rows = range(self.generated_ids.shape[0]) if sequence is None else [sequence]
        if sequence is not None and not 0 <= sequence < self.generated_ids.shape[0]:
            raise InputError(f"sequence {sequence} does not exist; this generation holds {self.generated_ids.shape[0]}.")
        steps = list(range(self.generated_ids.shape[1]))
        series = {}
        for b in rows:
            prob = frame[frame["sequence"] == b].sort_values("step")["prob"].to_numpy(dtype=float, copy=True)
            if self.live is not None:  # nothing to draw after the row's end of sequence
                prob[~self.live[b].numpy()] = float("nan")
            series[f"sequence {b}"] = prob
        return curves(steps, series, title=f"probability of each generated token — {self.info.get('model', '')}",
                      x_title="generation step", y_title="probability")

    def _state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        tensors = {"sequences": self.sequences, "generated_ids": self.generated_ids}
        if self.live is not None:
            tensors["live"] = self.live.to(torch.uint8)
        if self.logits is not None:
            tensors["logits"] = self.logits
        tensors.update({f"step/{t}/{n}": v for t, s in enumerate(self.steps) for n, v in s.items()})
        tensors.update({f"encoder/{n}": v for n, v in self.encoder.items()})
        cache_data, cache_tensors = self.cache._state()
        tensors.update({f"cache/{k}": v for k, v in cache_tensors.items()})
        data = {"texts": self.texts, "prompt_length": self.prompt_length, "n_steps": len(self.steps), "cache": cache_data,
                "cache_info": self.cache.info}
        return data, tensors

    @classmethod
    def _from_state(cls, data: dict[str, Any], tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> Generation:
        cache = ActivationCache._from_state(data["cache"], group(tensors, "cache/"), data.get("cache_info", info))
        return cls._assemble(data, tensors, cache, info)

    @classmethod
    def _assemble(cls, data: dict[str, Any], tensors: dict[str, torch.Tensor], cache: ActivationCache,
                  info: dict[str, Any]) -> Generation:
        steps: list[dict[str, torch.Tensor]] = [{} for _ in range(data["n_steps"])]
        for key, value in group(tensors, "step/").items():
            i, name = key.split("/", 1)
            steps[int(i)][name] = value
        return cls(sequences=tensors["sequences"], prompt_length=data["prompt_length"], generated_ids=tensors["generated_ids"],
                   texts=data["texts"], logits=tensors.get("logits"), steps=steps, encoder=group(tensors, "encoder/"),
                   cache=cache, info=info, live=tensors["live"].bool() if "live" in tensors else None)

    @classmethod
    def _from_legacy(cls, path: Path) -> Generation:
        meta, tensors = read_saved(path, "generation.json", "generation.safetensors", "Generation")
        return cls._assemble(meta, tensors, ActivationCache.load(path / "cache"), meta["info"])

    def __repr__(self) -> str:
        return (f"Generation({len(self.texts)} sequences, {self.generated_ids.shape[1]} new tokens, "
                f"{self.n_steps} steps, sites={len(self.cache)})")

    def _table_html(self) -> str:
        import pandas as pd

        return pd.DataFrame({"generated": self.texts}).to_html()


__all__ = ["Generation"]
