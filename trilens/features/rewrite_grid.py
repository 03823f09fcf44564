"""The rewrite grid: every (h, α) rewrite scored by the class probabilities on held-out texts and by a language
modelling score on unrelated text; per metric, the best rewrite that keeps the LM score at >= 99% of the base model's.

Metrics per held-out class text (P_A, P_B: summed probability of each class's tokens at the slot), averaged over texts:
APD = |P_A - P_B|; BPI = (1 - APD)(P_A + P_B) (balanced: both classes equally likely, and likely); A-directed =
(1 - P_B)·P_A; B-directed = (1 - P_A)·P_B. LM score: masked-LM accuracy (encoders: 15% of the unrelated texts'
tokens masked, fixed seed) or 1/(1 + mean NLL) (decoders: every next token; encoder-decoders: the slot token).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..capture.objectives import token_id
from ..errors import InputError
from ..provenance import provenance
from ..results import Result, register_result
from .data import FeatureData, FeatureRow
from .gradients import slot_batch, slot_logprobs
from .rewrite import WeightEditor, copy_model

if TYPE_CHECKING:
    from ..model import Model
    from .gradiend import Gradiend

DEFAULT_ALPHAS = tuple(m * 10.0 ** e for e in range(2, -4, -1) for m in (5, 2, 1))
DEFAULT_HS = (-1.0, 0.0, 1.0)
METRICS = ("bpi", "a_directed", "b_directed")
LMS_KEEP = 0.99


class ClassProbabilities:
    """P_A and P_B at the slot of each held-out class text."""

    def __init__(self, model: Model, rows: Sequence[FeatureRow], class_tokens: dict[str, list[Any]], classes: Sequence[str]):
        self.slots = slot_batch(model, rows)
        self.ids = [torch.tensor([token_id(model, t) for t in class_tokens[c]]) for c in classes]

    def __call__(self, model: Model) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            probs = slot_logprobs(model, self.slots).exp()
        return probs[:, self.ids[0]].sum(1), probs[:, self.ids[1]].sum(1)


class LMScore:
    """A language-modelling score of ``model`` on unrelated texts (neutral rows with their slot filled)."""

    def __init__(self, model: Model, rows: Sequence[FeatureRow], seed: int = 42):
        if not rows:
            raise InputError("the LM score needs unrelated text: give neutral rows (\"class\": null) in the data.")
        sb = slot_batch(model, rows)
        known = sb.factual >= 0
        if not bool(known.all()):
            with torch.inference_mode():
                sb.factual[~known] = slot_logprobs(model, sb).argmax(-1)[~known].cpu()
        self.family = model.family
        tok = model.tokenizer
        if model.family == "encoder":
            ids = sb.batch.input_ids.clone()
            ids[torch.arange(len(rows)), sb.positions] = sb.factual
            special = torch.tensor(sorted(set(tok.all_special_ids)))
            real = sb.batch.attention_mask.bool() & ~torch.isin(ids, special)
            rng = random.Random(seed)
            masked = torch.zeros_like(real)
            for b in range(len(rows)):
                cand = real[b].nonzero().flatten().tolist()
                pick = [p for p in cand if rng.random() < 0.15] or [rng.choice(cand)]
                masked[b, pick] = True
            self.labels = ids[masked]
            self.masked = masked
            self.inputs = ids.masked_fill(masked, tok.mask_token_id)
            self.attention_mask = sb.batch.attention_mask
        elif model.family == "decoder":
            rows_ids = [tok(r.text)["input_ids"] + [int(f)] for r, f in zip(rows, sb.factual)]
            self.batch = model.encode(rows_ids)
        else:
            self.slots = sb

    def __call__(self, model: Model) -> float:
        hf = model.hf_model
        with torch.inference_mode():
            if self.family == "encoder":
                logits = hf(input_ids=self.inputs.to(model.device), attention_mask=self.attention_mask.to(model.device)).logits
                return float((logits[self.masked.to(model.device)].argmax(-1).cpu() == self.labels).float().mean())
            if self.family == "decoder":
                batch = self.batch.to(model.device)
                logp = hf(**batch.forward_kwargs()).logits[:, :-1].float().log_softmax(-1)
                nxt = batch.input_ids[:, 1:]
                mask = batch.attention_mask[:, 1:].bool()
                nll = -logp.gather(-1, nxt[..., None])[..., 0][mask].mean()
            else:
                logp = slot_logprobs(model, self.slots)
                nll = -logp[torch.arange(len(logp)), self.slots.factual.to(logp.device)].mean()
        return float(1.0 / (1.0 + nll))


def _metrics(p_a: torch.Tensor, p_b: torch.Tensor, lms: float) -> dict[str, float]:
    apd = (p_a - p_b).abs()
    out = {"p_a": float(p_a.mean()), "p_b": float(p_b.mean()), "apd": float(apd.mean()),
           "bpi": float(((1 - apd) * (p_a + p_b)).mean()), "a_directed": float(((1 - p_b) * p_a).mean()),
           "b_directed": float(((1 - p_a) * p_b).mean()), "lms": lms}
    for m in METRICS:
        out[f"{m}_lms"] = out[m] * lms
    return out


@register_result
class RewriteGrid(Result):
    """One row per rewrite (``h``, ``alpha``; the base model is h=None, α=0) with P_A, P_B, APD, BPI, the directed
    metrics, the LM score and each metric times it; ``selected[metric]`` the row chosen for it (None: no rewrite
    kept the LM score)."""

    def __init__(self, *, rows: list[dict[str, Any]], classes: Sequence[str], selected: dict[str, int | None],
                 info: dict[str, Any]):
        self.rows, self.classes, self.selected, self.info = rows, tuple(classes), selected, info

    @property
    def base(self) -> dict[str, Any]:
        return self.rows[0]

    def best(self, metric: str = "bpi") -> dict[str, Any] | None:
        """The chosen rewrite for ``metric`` (``bpi``, ``a_directed``, ``b_directed``)."""
        if metric not in METRICS:
            raise InputError(f"metric must be one of {', '.join(METRICS)}, not {metric!r}.")
        i = self.selected.get(metric)
        return None if i is None else self.rows[i]

    def __repr__(self) -> str:
        parts = []
        for m in METRICS:
            b = self.best(m)
            parts.append(f"{m}: " + ("none" if b is None else f"h={b['h']:+g} α={b['alpha']:g} ({b[m + '_lms']:.3f})"))
        return f"RewriteGrid({len(self.rows) - 1} rewrites; base bpi×lms {self.base['bpi_lms']:.3f}; " + "; ".join(parts) + ")"

    def to_frame(self):
        import pandas as pd

        frame = pd.DataFrame(self.rows)
        frame["selected_for"] = [",".join(m for m, i in self.selected.items() if i == k) for k in range(len(self.rows))]
        return frame

    def figure(self, metric: str = "bpi_lms"):
        """``metric`` (a column: p_a, p_b, bpi, lms, bpi_lms, ...) against α, one line per h."""
        from ..viz import rewrite_grid

        frame = self.to_frame()
        if metric not in frame.columns or metric in ("h", "alpha", "selected_for"):
            raise InputError(f"metric must be one of the grid's value columns, not {metric!r}.")
        grid = frame.iloc[1:]
        alphas = sorted(set(grid["alpha"]))
        series = {f"h = {h:+g}": [float(grid[(grid.h == h) & (grid.alpha == a)][metric].iloc[0]) for a in alphas]
                  for h in sorted(set(grid["h"]))}
        names = {"p_a": f"P({self.classes[0]})", "p_b": f"P({self.classes[1]})"}
        return rewrite_grid(alphas, series, baseline=float(self.base[metric]), y_title=names.get(metric, metric),
                            title=f"GRADIEND rewrites: {names.get(metric, metric)} (+h toward {self.classes[0]})")

    def _state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return {"rows": self.rows, "classes": list(self.classes), "selected": self.selected}, {}

    @classmethod
    def _from_state(cls, data: dict[str, Any], tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> RewriteGrid:
        return cls(rows=data["rows"], classes=data["classes"], selected=data["selected"], info=info)


def rewrite_grid(model: Model, gradiend: Gradiend, data: FeatureData, *, alphas: Sequence[float] = DEFAULT_ALPHAS,
                 hs: Sequence[float] = DEFAULT_HS, n_texts: int = 128, progress: bool = False) -> RewriteGrid:
    """Score every rewrite θ + α·dec(h) of a copy of ``model`` (``model`` itself is not changed) on ``data``'s
    held-out class rows (up to ``n_texts``) and its neutral rows (the LM score) -> ``RewriteGrid``."""
    from tqdm.auto import tqdm

    if not alphas or not hs:
        raise InputError("give at least one α and one h.")
    texts = data.test[:n_texts]
    work = copy_model(model, name=f"{model.name} (rewrite grid)")
    probs = ClassProbabilities(work, texts, gradiend.class_tokens, gradiend.classes)
    lm = LMScore(work, data.neutral[:n_texts])
    editor = WeightEditor(work, gradiend.layout, gradiend.keep)
    rows = [{"h": None, "alpha": 0.0, **_metrics(*probs(work), lm(work))}]
    grid = [(float(h), float(a)) for h in hs for a in alphas]
    for h, a in tqdm(grid, desc="rewrites", disable=not progress):
        editor.set(a * gradiend.direction(h))
        rows.append({"h": h, "alpha": a, **_metrics(*probs(work), lm(work))})
    editor.set(None)
    floor = LMS_KEEP * rows[0]["lms"]
    selected: dict[str, int | None] = {}
    for m in METRICS:
        ok = [i for i in range(1, len(rows)) if rows[i]["lms"] >= floor]
        selected[m] = max(ok, key=lambda i: rows[i][f"{m}_lms"]) if ok else None
    params = {"alphas": list(alphas), "hs": list(hs), "n_texts": len(texts), "lms_keep": LMS_KEEP}
    info = provenance(model, "gradiend_rewrite_grid", params, len(texts), classes=list(gradiend.classes),
                      n_neutral=len(data.neutral[:n_texts]))
    return RewriteGrid(rows=rows, classes=gradiend.classes, selected=selected, info=info)
