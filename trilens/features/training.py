"""Training a GRADIEND: batches of same-class rows -> (source, target) weight gradients -> the autoencoder, several
seeds, the checkpoint with the best held-out |Pearson r| kept, its sign set so class A is +1.

Each training batch's gradients are computed once and kept while they fit ``cache_gib`` (every seed and epoch then
reuses them); beyond that they are computed again when needed, so memory stays bounded.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError
from ..provenance import provenance
from .data import FeatureData, FeatureRow
from .gradiend import Gradiend, GradiendModule
from .gradients import (
    PAIRINGS,
    GradientReader,
    paired,
    source_gradients,
    top_coordinates,
)
from .params import select_parameters

if TYPE_CHECKING:
    from ..model import Model


MIN_STEPS = 300  # default floor: at lr 1e-5 the zoo's GRADIENDs reach class means of ±0.4 after 60 updates, ±0.99 after 150
MAX_EVAL_GIB = 8.0  # the held-out rows' gradients stay in memory for every evaluation


def class_batches(data: FeatureData, batch_size: int, seed: int) -> list[list[FeatureRow]]:
    """Each class's training rows shuffled (``seed``) and cut into full batches of ``batch_size``, the classes taking
    turns (an incomplete last batch is dropped)."""
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, not {batch_size}.")
    rng = random.Random(f"gradiend-batches-{seed}")
    per_class = []
    for c in data.classes:
        rows = data.select("train", c)
        if len(rows) < batch_size:
            raise InputError(f"class {c!r} has {len(rows)} training rows, fewer than one batch of {batch_size}: give "
                             "more rows or a smaller batch_size.")
        rng.shuffle(rows)
        per_class.append([rows[i:i + batch_size] for i in range(0, len(rows) - batch_size + 1, batch_size)])
    out = []
    for i in range(max(len(b) for b in per_class)):
        out += [b[i] for b in per_class if i < len(b)]
    return out


def eval_rows(data: FeatureData, n: int) -> list[FeatureRow]:
    """Up to ``n`` held-out rows, balanced between the classes (the first of each class's test rows)."""
    per = max(1, n // 2)
    return [r for c in data.classes for r in data.select("test", c)[:per]]


class _GradientCache:
    """Training batch i -> (source, target) vectors, computed once and kept while they fit the budget."""

    def __init__(self, reader: GradientReader, batches: list[list[FeatureRow]], source: str, target: str,
                 budget_bytes: float):
        self.reader, self.batches, self.source, self.target = reader, batches, source, target
        self.kept: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.room = int(budget_bytes // max(1, 2 * 4 * reader.size))
        self.seconds = 0.0

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if i in self.kept:
            return self.kept[i]
        start = time.perf_counter()
        g_f, g_c = self.reader.pair(self.batches[i])
        pair = paired(g_f, g_c, self.source), paired(g_f, g_c, self.target)
        self.seconds += time.perf_counter() - start
        if len(self.kept) < self.room:
            self.kept[i] = pair
        return pair


def _pearson(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson r of each feature column of ``h`` with ``y`` (0 where h is constant)."""
    hc, yc = h - h.mean(0), y - y.mean()
    denom = hc.norm(dim=0) * yc.norm()
    return torch.where(denom > 0, (hc * yc[:, None]).sum(0) / denom.clamp_min(1e-30), torch.zeros_like(denom))


def train_gradiend(model: Model, data: FeatureData, *, params: Sequence[str] | str | None = None,
                   exclude: Sequence[str] | str | None = None, keep_fraction: float = 1.0, prune_batches: int = 8,
                   batch_size: int = 32, steps: int | None = None, epochs: int = 3, eval_every: int = 250,
                   n_eval: int = 64, seeds: Sequence[int] = (0, 1, 2), lr: float = 1e-5, weight_decay: float = 1e-2,
                   source: str = "counterfactual", target: str = "diff", n_features: int = 1, cache_gib: float = 2.0,
                   progress: bool = False) -> Gradiend:
    """Train a GRADIEND on ``model``'s gradients for ``data``'s two classes -> ``Gradiend``.

    Args:
        params: shell-style name patterns of the base-model parameters to read (default: all; the prediction head
            is never included).
        exclude: name patterns of parameters left out.
        keep_fraction: pre-pruning: keep this fraction of coordinates, those with the largest mean
            |factual - counterfactual| gradient over ``prune_batches`` training batches.
        batch_size: same-class rows per gradient (the loss is their mean).
        steps: GRADIEND updates per seed (default: ``epochs`` passes over the training batches, at least
            ``MIN_STEPS``).
        eval_every: held-out evaluation period in steps (also at step 0, never kept, and at the end).
        n_eval: held-out rows evaluated (balanced between the classes), one gradient per row.
        seeds: one GRADIEND per seed; the one with the best held-out |r| is kept.
        source: the gradient pairing encoded, ``factual``, ``counterfactual`` or ``diff``. The default source
            is the counterfactual gradient (the ``gradiend`` package's default), not the paper's factual one: a model
            that is sure of the factual token has a factual gradient near zero (zoo:bert: norm 0.03 against 17.5 for
            the counterfactual), which leaves little to encode (held-out |r| 0.57 instead of 1.00 there, studies/gradiend).
        cache_gib: memory for keeping training gradients between uses (beyond it they are recomputed).
    """
    from tqdm.auto import tqdm

    _check_settings(source, target, seeds, n_features, eval_every, n_eval)
    started = time.perf_counter()
    layout = select_parameters(model, params, exclude)
    batches = class_batches(data, batch_size, seeds[0])
    reader, keep = _pruned_reader(model, layout, batches, keep_fraction, prune_batches, progress)
    held_out = eval_rows(data, n_eval)
    _check_eval_memory(len(held_out), reader.size)
    y = torch.tensor([data.sign(r) for r in held_out])
    x_eval = source_gradients(reader, held_out, source)[0]
    cache = _GradientCache(reader, batches, source, target, cache_gib * 2 ** 30)
    total = steps if steps is not None else max(epochs * len(batches), MIN_STEPS)
    if total < 1:
        raise InputError(f"steps must be at least 1, not {total}.")
    fit = _Fit(cache, x_eval, y, total, eval_every, lr, weight_decay)
    bar = tqdm(total=total * len(seeds), desc="GRADIEND", disable=not progress)
    for seed in seeds:
        fit.train_seed(reader.size, n_features, seed, len(batches), bar)
    bar.close()
    module, best = _best_module(fit.best, reader.size, n_features, x_eval, y)
    best["n_eval"] = len(held_out)
    params_ = {"params": params, "exclude": exclude, "keep_fraction": keep_fraction, "prune_batches": prune_batches,
               "batch_size": batch_size, "steps": total, "eval_every": eval_every, "n_eval": n_eval,
               "seeds": list(seeds), "lr": lr, "weight_decay": weight_decay, "source": source, "target": target,
               "n_features": n_features}
    info = provenance(model, "gradiend", params_, len(data.rows), data=data.description, classes=list(data.classes),
                      n_batches=len(batches), n_coordinates=reader.size, n_parameters=layout.size,
                      seconds={"total": time.perf_counter() - started, "gradients": cache.seconds,
                               "autoencoder": fit.train_seconds})
    return Gradiend(module=module, layout=layout, keep=keep, classes=data.classes,
                    class_tokens={c: list(v) for c, v in data.class_tokens().items()}, source=source, target=target,
                    curve=fit.curve, evaluation=best, info=info)


def _check_settings(source: str, target: str, seeds: Sequence[int], n_features: int, eval_every: int,
                    n_eval: int) -> None:
    """Refuse bad settings before any gradient is read."""
    for name, kind in (("source", source), ("target", target)):
        if kind not in PAIRINGS:
            raise InputError(f"{name} must be one of {', '.join(PAIRINGS)}, not {kind!r}.")
    if not seeds:
        raise InputError("give at least one seed.")
    if n_features < 1 or eval_every < 1 or n_eval < 2:
        raise InputError("n_features and eval_every must be at least 1, n_eval at least 2.")


def _pruned_reader(model: Model, layout: Any, batches: list[list[FeatureRow]], keep_fraction: float,
                   prune_batches: int, progress: bool) -> tuple[GradientReader, torch.Tensor | None]:
    """The gradient reader over every coordinate of ``layout``, or (``keep_fraction`` < 1) over the top coordinates by
    mean |factual - counterfactual| gradient on the first ``prune_batches`` batches, and those coordinates."""
    reader = GradientReader(model, layout)
    if keep_fraction >= 1.0:
        return reader, None
    keep = top_coordinates(reader, batches[:max(1, prune_batches)], keep_fraction, progress=progress)
    return GradientReader(model, layout, keep), keep


def _check_eval_memory(n_rows: int, size: int) -> None:
    need = n_rows * size * 4 / 2 ** 30
    if need > MAX_EVAL_GIB:
        raise InputError(f"the {n_rows} held-out gradients of {size:,} coordinates would take {need:.1f} GiB: "
                         "pre-prune (keep_fraction=0.01 keeps the top 1%), read fewer parameters, or lower n_eval.")


class _Fit:
    """Training of one GRADIEND per seed, evaluated every ``eval_every`` steps on the held-out gradients; the best
    held-out |r| over all seeds and steps (never step 0) is kept with its weights."""

    def __init__(self, cache: _GradientCache, x_eval: torch.Tensor, y: torch.Tensor, total: int, eval_every: int,
                 lr: float, weight_decay: float):
        self.cache, self.x_eval, self.y, self.total, self.eval_every = cache, x_eval, y, total, eval_every
        self.lr, self.weight_decay = lr, weight_decay
        self.curve: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"abs_r": -1.0}
        self.train_seconds = 0.0

    def train_seed(self, size: int, n_features: int, seed: int, n_batches: int, bar: Any) -> None:
        module = GradiendModule(size, n_features, generator=torch.Generator().manual_seed(seed))
        # fused: one kernel over the 3n weights instead of a loop of element-wise ops (1.5x per step on the CPU)
        opt = torch.optim.AdamW(module.parameters(), lr=self.lr, weight_decay=self.weight_decay, fused=True)
        order = list(range(n_batches))
        random.Random(f"gradiend-order-{seed}").shuffle(order)
        loss_value: float | None = None  # no update before step 0 (None, not NaN: the curve is saved as JSON)
        for step in range(self.total + 1):
            if step % self.eval_every == 0 or step == self.total:
                self._evaluate(module, seed, step, loss_value)
            if step == self.total:
                break
            x, target_x = self.cache[order[step % n_batches]]
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.mse_loss(module(x[None]), target_x[None])
            loss.backward()
            opt.step()
            loss_value = float(loss.detach())
            self.train_seconds += time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(seed=seed, r=f"{self.curve[-1]['r']:+.3f}")

    def _evaluate(self, module: GradiendModule, seed: int, step: int, loss_value: float | None) -> None:
        with torch.no_grad():
            r = _pearson(module.encode(self.x_eval), self.y)
        feature = int(r.abs().argmax())
        value = float(r[feature])
        self.curve.append({"seed": seed, "step": step, "r": value, "abs_r": abs(value), "loss": loss_value})
        if step > 0 and abs(value) > self.best["abs_r"]:
            self.best = {"abs_r": abs(value), "r": value, "seed": seed, "step": step, "feature": feature,
                         "state": {k: v.detach().clone() for k, v in module.state_dict().items()}}


def _best_module(best: dict[str, Any], size: int, n_features: int, x_eval: torch.Tensor,
                 y: torch.Tensor) -> tuple[GradiendModule, dict[str, Any]]:
    """The best GRADIEND, each feature flipped so that class A encodes positive, and its evaluation."""
    best = dict(best)
    module = GradiendModule(size, n_features)
    module.load_state_dict(best.pop("state"))
    with torch.no_grad():
        h = module.encode(x_eval)
    for f, r in enumerate(_pearson(h, y).tolist()):
        if r < 0:
            module.flip(f)
    with torch.no_grad():
        h = module.encode(x_eval)[:, best["feature"]]
    best.update(r=abs(best["r"]), mean_a=float(h[y > 0].mean()), mean_b=float(h[y < 0].mean()))
    return module, best
