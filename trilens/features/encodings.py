"""Encoding texts with a trained GRADIEND: one gradient per text -> its feature value(s)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError
from ..inputs import token_names
from ..provenance import provenance
from ..results import Result, register_result
from .data import FeatureRow

if TYPE_CHECKING:
    from ..model import Model
    from .gradiend import Gradiend

NEUTRAL = "neutral"
ENCODE_CHUNK = 16  # texts whose gradients are held at once while encoding


@register_result
class EncodingResult(Result):
    """``values [text, feature]``: each text's feature values; ``labels`` its class (None: neutral or unknown);
    ``tokens`` the token whose gradient was read at its slot."""

    def __init__(self, *, values: torch.Tensor, texts: list[str], labels: list[str | None], tokens: list[str],
                 classes: Sequence[str], info: dict[str, Any]):
        self.values, self.texts, self.labels, self.tokens = values, texts, labels, tokens
        self.classes, self.info = tuple(classes), info

    def __repr__(self) -> str:
        means = ", ".join(f"{k} {v:+.3f}" for k, v in self.class_means().items())
        return f"EncodingResult({len(self.texts)} texts; mean feature value: {means})"

    def group(self, label: str | None) -> str:
        return NEUTRAL if label is None else label

    def class_means(self, feature: int = 0) -> dict[str, float]:
        """The mean feature value of each class (and of the neutral texts) present."""
        out: dict[str, float] = {}
        for name in (*self.classes, NEUTRAL):
            idx = [i for i, lab in enumerate(self.labels) if self.group(lab) == name]
            if idx:
                out[name] = float(self.values[idx, feature].mean())
        return out

    def correlation(self, feature: int = 0) -> float:
        """Pearson r of the feature value with the class (+1 A, -1 B) over the class texts."""
        idx = [i for i, lab in enumerate(self.labels) if lab in self.classes]
        y = torch.tensor([1.0 if self.labels[i] == self.classes[0] else -1.0 for i in idx])
        if len(idx) < 2 or y.std() == 0:
            raise InputError("the correlation needs texts of both classes.")
        return float(torch.corrcoef(torch.stack([self.values[idx, feature].float(), y]))[0, 1])

    def to_frame(self):
        import pandas as pd

        rows = []
        for i, text in enumerate(self.texts):
            for f in range(self.values.shape[1]):
                rows.append({"text": text, "group": self.group(self.labels[i]), "token": self.tokens[i],
                             "feature": f, "value": float(self.values[i, f])})
        return pd.DataFrame(rows)

    def figure(self, feature: int = 0):
        """Each text's feature value, one column of points per class (neutral texts beside them)."""
        from ..viz import feature_values

        groups = [self.group(lab) for lab in self.labels]
        return feature_values(self.values[:, feature], groups, self.texts,
                              order=[g for g in (*self.classes, NEUTRAL) if g in groups],
                              title=f"GRADIEND feature {feature}: +1 = {self.classes[0]}, -1 = {self.classes[1]}")

    def _state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return ({"texts": self.texts, "labels": self.labels, "tokens": self.tokens, "classes": list(self.classes)},
                {"values": self.values})

    @classmethod
    def _from_state(cls, data: dict[str, Any], tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> EncodingResult:
        return cls(values=tensors["values"], texts=data["texts"], labels=data["labels"], tokens=data["tokens"],
                   classes=data["classes"], info=info)


def _with_class_tokens(gradiend: Gradiend, model: Model, rows: list[FeatureRow]) -> list[FeatureRow]:
    """Rows without a counterfactual token get one where their slot token (given, or the model's prediction) is a
    class token: the other class's first token. Their gradient is then read as the GRADIEND was trained to read it; the
    rest (neutral text) are read by their factual gradient."""
    from dataclasses import replace

    from ..capture.objectives import token_id
    from .gradients import slot_batch, slot_logprobs

    open_rows = [i for i, r in enumerate(rows) if r.counterfactual is None]
    if not open_rows:
        return rows
    predicted = {}
    unknown = [i for i in open_rows if rows[i].factual is None]
    if unknown:
        with torch.inference_mode():
            ids = slot_logprobs(model, slot_batch(model, [rows[i] for i in unknown])).argmax(-1).tolist()
        predicted = dict(zip(unknown, ids))
    owner = {token_id(model, t): c for c, tokens in gradiend.class_tokens.items() for t in tokens}
    out = list(rows)
    for i in open_rows:
        tid = predicted[i] if i in predicted else token_id(model, rows[i].factual)
        cls = owner.get(tid)
        if cls is None:
            out[i] = replace(rows[i], factual=tid) if i in predicted else rows[i]
            continue
        other = gradiend.class_tokens[gradiend.classes[1 - gradiend.classes.index(cls)]][0]
        out[i] = replace(rows[i], factual=tid, counterfactual=other)
    return out


def encode_rows(gradiend: Gradiend, model: Model, rows: Sequence[FeatureRow | str], *,
                labels: Sequence[str | None] | None = None, progress: bool = False) -> EncodingResult:
    """See ``Gradiend.encode``."""
    from .gradients import source_gradients

    if isinstance(rows, (str, FeatureRow)):
        rows = [rows]
    if not rows:
        raise InputError("no texts to encode.")
    if labels is not None and len(labels) != len(rows):
        raise InputError(f"{len(labels)} labels for {len(rows)} texts.")
    rows = _with_class_tokens(gradiend, model, [r if isinstance(r, FeatureRow) else FeatureRow(r, None) for r in rows])
    given = [r.label for r in rows] if labels is None else list(labels)
    reader = gradiend.reader(model)
    values, used = [], []
    for start in range(0, len(rows), ENCODE_CHUNK):  # chunks: a big model's gradients are never all held at once
        x, u = source_gradients(reader, rows[start:start + ENCODE_CHUNK], gradiend.source, progress=progress)
        values.append(gradiend.encode_gradients(x))
        used.append(u)
    values, used = torch.cat(values), torch.cat(used)
    ids = used.tolist()
    tokens = token_names(model.tokenizer, ids)
    info = provenance(model, "gradiend_encode", {"source": gradiend.source}, len(rows),
                      gradiend={"classes": list(gradiend.classes), "evaluation_abs_r": gradiend.evaluation.get("abs_r")})
    return EncodingResult(values=values, texts=[r.text for r in rows], labels=given, tokens=tokens,
                          classes=gradiend.classes, info=info)
