"""Probes for every layer at once: multinomial logistic regression and ridge over ``[layer, example, dim]``.

The logistic objective is scikit-learn's: ``C * sum(cross-entropy) + 0.5 * ||W||^2`` (the intercept
is not penalised), divided by the number of examples; ridge is solved in closed form for all layers
in one batched solve.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from .rows import ChunkedRows, Rows, centred_times, feature_scale, split_mean
from .solver import MAX_ITER, LogisticFit, fit_logistic


@dataclass
class LayerLogistic:
    """Fitted weights ``[layer, dim, class]``, intercepts ``[layer, class]`` and the feature scaling used."""

    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor  # [layer, dim] float64: features are standardised before the linear map
    scale: torch.Tensor
    n_iter: torch.Tensor  # [layer] iterations until convergence
    converged: torch.Tensor  # [layer] bool: the gradient reached ``tol`` within ``max_iter``

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``x [layer, n, dim]`` -> logits ``[layer, n, class]`` (inputs centred first: see ``Rows.centred``)."""
        raw = self.weight / self.scale[..., None]
        shift, rest = split_mean(self.mean)
        bias = self.bias.double() - torch.einsum("ld,ldk->lk", rest, raw.double())
        return torch.baddbmm(bias.float()[:, None], x.float() - shift[:, None], raw)

    def logits_rows(self, layer: int, rows: Rows | ChunkedRows) -> torch.Tensor:
        """Logits ``[n, class]`` of one layer's rows, in one pass (rows read in chunks stay on disk)."""
        return centred_times(rows, self.mean[layer], self.weight[layer] / self.scale[layer][:, None]) + self.bias[layer]

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x).argmax(-1)


def standardiser(x: torch.Tensor, standardize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-layer feature mean and scale of ``x [layer, n, dim]`` (scale 1 if not ``standardize`` or a feature is
    constant: ``rows.feature_scale``).

    Centring never changes a model with an unpenalised intercept; it only helps the solver.
    """
    var, mean = torch.var_mean(x.double(), 1, unbiased=False)
    return mean.to(x.dtype), feature_scale(mean, var, x.shape[1], standardize).to(x.dtype)


def fit_layers(x: torch.Tensor | Sequence[Rows | ChunkedRows], y: torch.Tensor, n_classes: int, *, C: float = 1.0,
               weight: torch.Tensor | None = None, max_iter: int = MAX_ITER, tol: float = 1e-4, history: int = 10,
               standardize: bool = True, workers: int | None = None) -> LayerLogistic:
    """Fit one multinomial logistic regression per layer of ``x [layer, n, dim]`` (or one ``Rows`` /
    ``ChunkedRows`` per layer) to labels ``y [n]`` (0..n_classes-1), scikit-learn's objective.

    Each layer runs the pass-counting L-BFGS of ``solver.py`` and stops when its gradient's
    max-norm is below ``tol`` (scikit-learn's criterion), so converged layers cost nothing more.
    Layers run side by side on ``workers`` threads (default: torch's thread count), each with
    single-threaded products: skinny products split over two threads gain little, two layers at once
    nearly twice (measured: 1.04 s against 1.36 s one layer at a time, benchmarks/RESULTS.md).

    Args:
        C: inverse regularisation strength, as in scikit-learn's ``LogisticRegression``.
        weight: per-example weights ``[n]`` (0 leaves an example out).
        history: L-BFGS memory.
    """
    layers = [Rows(x[k]) for k in range(x.shape[0])] if isinstance(x, torch.Tensor) else list(x)
    workers = min(workers or torch.get_num_threads(), len(layers))

    def fit(rows: Rows | ChunkedRows) -> LogisticFit:
        return fit_logistic(rows, y, n_classes, C=C, weight=weight, max_iter=max_iter, tol=tol, history=history,
                            standardize=standardize)

    if workers <= 1:
        fits = [fit(rows) for rows in layers]
    else:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # process-wide in torch; restored below
        try:
            with ThreadPoolExecutor(workers) as pool:
                fits = list(pool.map(fit, layers))
        finally:
            torch.set_num_threads(threads)
    return LayerLogistic(weight=torch.stack([f.weight for f in fits]), bias=torch.stack([f.bias for f in fits]),
                         mean=torch.stack([f.mean for f in fits]), scale=torch.stack([f.scale for f in fits]),
                         n_iter=torch.tensor([f.n_iter for f in fits]), converged=torch.tensor([f.converged for f in fits]))


@dataclass
class LayerRidge:
    """Fitted ridge weights ``[layer, dim, target]`` and intercepts ``[layer, target]`` on standardised features."""

    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    scale: torch.Tensor

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """``x [layer, n, dim]`` -> predictions ``[layer, n, target]``."""
        z = (x.to(self.weight.dtype) - self.mean[:, None]) / self.scale[:, None]
        return torch.baddbmm(self.bias[:, None], z, self.weight)

    def predict_rows(self, layer: int, rows: Rows | ChunkedRows) -> torch.Tensor:
        """Predictions ``[n, target]`` for one layer's rows, in one pass (rows read in chunks stay on disk)."""
        return centred_times(rows, self.mean[layer], self.weight[layer] / self.scale[layer][:, None]) + self.bias[layer]


def fit_ridge_layers(x: torch.Tensor, y: torch.Tensor, *, alpha: float = 1.0, standardize: bool = True) -> LayerRidge:
    """Closed-form ridge per layer of ``x [layer, n, dim]`` on ``y [n]`` or ``[n, targets]`` (scikit-learn's ``Ridge``)."""
    x = x.to(torch.float64)
    y = y.to(torch.float64)
    y2 = y[:, None] if y.dim() == 1 else y
    mean, scale = standardiser(x, standardize)
    z = (x - mean[:, None]) / scale[:, None]
    y_mean = y2.mean(0)
    eye = torch.eye(z.shape[-1], dtype=z.dtype)
    gram = torch.bmm(z.transpose(1, 2), z) + alpha * eye
    rhs = torch.matmul(z.transpose(1, 2), (y2 - y_mean))
    weight = torch.linalg.solve(gram, rhs)
    return LayerRidge(weight=weight, bias=y_mean.expand(x.shape[0], -1).clone(), mean=mean, scale=scale)


def fit_ridge_rows(layers: Sequence[Rows | ChunkedRows], y: torch.Tensor, *, weight: torch.Tensor | None = None,
                   alpha: float = 1.0, standardize: bool = True) -> LayerRidge:
    """``fit_ridge_layers`` for rows read in parts: the same standardised closed form from the weighted
    moments, the centred Gram matrix and ``X^T y`` (two passes per layer; ``weight`` 0 leaves a row out),
    so no layer is held whole."""
    y = y.to(torch.float64)
    y2 = y[:, None] if y.dim() == 1 else y
    w = torch.ones(len(y2), dtype=torch.float64) if weight is None else weight.to(torch.float64)
    y_mean = (w @ y2) / w.sum()
    weighted_y = (w[:, None] * (y2 - y_mean)).float()  # the weighted mean of x times it sums to zero
    fits = []
    for rows in layers:
        mean, var = rows.moments(w)
        scale = feature_scale(mean, var, float(w.sum()), standardize)
        gram = rows.centred_gram(mean, w) / scale[:, None] / scale[None, :]
        gram += alpha * torch.eye(len(mean), dtype=torch.float64)
        rhs = rows.centred(mean).rmatmul(weighted_y).double() / scale[:, None]  # centred: see Rows.centred
        fits.append((torch.linalg.solve(gram, rhs), mean, scale))
    return LayerRidge(weight=torch.stack([f[0] for f in fits]), bias=y_mean.expand(len(fits), -1).clone(),
                      mean=torch.stack([f[1] for f in fits]), scale=torch.stack([f[2] for f in fits]))
