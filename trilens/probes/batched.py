"""Multinomial logistic regression for many layers at once: one batched L-BFGS over ``[layer, example, dim]``.

Each layer's problem is independent (its own weights, history, step size and convergence test);
only the tensor work is shared, so all layers cost about as much as one large matrix product per
iteration. The objective is scikit-learn's: ``C * sum(cross-entropy) + 0.5 * ||W||^2`` (the
intercept is not penalised), divided by the number of examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LayerLogistic:
    """Fitted weights ``[layer, dim, class]``, intercepts ``[layer, class]`` and the feature scaling used."""

    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor  # [layer, dim]: features are standardised before the linear map
    scale: torch.Tensor
    n_iter: torch.Tensor  # [layer] iterations until convergence

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``x [layer, n, dim]`` -> logits ``[layer, n, class]``."""
        z = (x.to(self.weight.dtype) - self.mean[:, None]) / self.scale[:, None]
        return torch.baddbmm(self.bias[:, None], z, self.weight)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x).argmax(-1)


def standardiser(x: torch.Tensor, standardize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-layer feature mean and scale of ``x [layer, n, dim]`` (scale 1 if not ``standardize`` or a feature is constant).

    Centring never changes a model with an unpenalised intercept; it only helps the solver.
    """
    mean = x.mean(1)
    if not standardize:
        return mean, torch.ones_like(mean)
    std = x.std(1, unbiased=False)
    return mean, torch.where(std > 1e-12, std, torch.ones_like(std))


def fit_layers(x: torch.Tensor, y: torch.Tensor, n_classes: int, *, C: float = 1.0, max_iter: int = 200,
               tol: float = 1e-4, history: int = 10, standardize: bool = True,
               dtype: torch.dtype = torch.float32) -> LayerLogistic:
    """Fit one multinomial logistic regression per layer of ``x [layer, n, dim]`` to labels ``y [n]`` (0..n_classes-1).

    Args:
        C: inverse regularisation strength, as in scikit-learn's ``LogisticRegression``.
        tol: a layer stops when its gradient's max-norm falls below ``tol`` (scikit-learn's ``pgtol``).
        history: L-BFGS memory.
    """
    x = x.to(dtype)
    n_layers, n, dim = x.shape
    mean, scale = standardiser(x, standardize)
    z = (x - mean[:, None]) / scale[:, None]
    onehot = torch.nn.functional.one_hot(y.long(), n_classes).to(dtype)
    lam = 1.0 / (C * n)
    n_w = dim * n_classes

    def loss_and_grad(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = theta[:, :n_w].view(n_layers, dim, n_classes)
        b = theta[:, n_w:]
        logits = torch.baddbmm(b[:, None], z, w)
        logp = logits.log_softmax(-1)
        loss = -(onehot * logp).sum((1, 2)) / n + 0.5 * lam * (w * w).sum((1, 2))
        resid = (logp.exp() - onehot) / n  # d loss / d logits
        gw = torch.bmm(z.transpose(1, 2), resid) + lam * w
        return loss, torch.cat([gw.reshape(n_layers, n_w), resid.sum(1)], dim=1)

    def losses_only(theta: torch.Tensor) -> torch.Tensor:
        w = theta[:, :n_w].view(n_layers, dim, n_classes)
        logp = torch.baddbmm(theta[:, None, n_w:], z, w).log_softmax(-1)
        return -(onehot * logp).sum((1, 2)) / n + 0.5 * lam * (w * w).sum((1, 2))

    theta = torch.zeros(n_layers, n_w + n_classes, dtype=dtype)
    loss, grad = loss_and_grad(theta)
    s_hist: list[torch.Tensor] = []
    y_hist: list[torch.Tensor] = []
    active = torch.ones(n_layers, dtype=torch.bool)
    n_iter = torch.zeros(n_layers, dtype=torch.long)
    for it in range(max_iter):
        active &= grad.abs().amax(1) > tol
        if not bool(active.any()):
            break
        n_iter += active.long()
        direction = _two_loop(grad, s_hist, y_hist)
        if not s_hist:  # first step: unit length, as scipy's L-BFGS-B does
            direction = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12)
        slope = (grad * direction).sum(1)
        bad = slope >= 0  # not a descent direction (stale history): fall back to steepest descent
        if bool(bad.any()):
            direction[bad] = -grad[bad]
            slope = (grad * direction).sum(1)
        step = torch.ones(n_layers, dtype=dtype)
        accepted = ~active
        new_loss = loss.clone()
        for _ in range(30):  # backtracking (Armijo) line search, per layer
            trial = losses_only(theta + step[:, None] * direction)
            ok = (trial <= loss + 1e-4 * step * slope) & ~accepted
            new_loss = torch.where(ok, trial, new_loss)
            accepted |= ok
            if bool(accepted.all()):
                break
            step = torch.where(accepted, step, step * 0.5)
        moved = accepted & active
        step = torch.where(moved, step, torch.zeros_like(step))
        new_theta = theta + step[:, None] * direction
        _, new_grad = loss_and_grad(new_theta)
        s, yv = new_theta - theta, new_grad - grad
        curvature = (s * yv).sum(1)
        keep = moved & (curvature > 1e-10)
        # layers that did not move (converged or stuck) keep their history unchanged: zero pair, skipped below
        s_hist.append(torch.where(keep[:, None], s, torch.zeros_like(s)))
        y_hist.append(torch.where(keep[:, None], yv, torch.zeros_like(yv)))
        if len(s_hist) > history:
            s_hist.pop(0)
            y_hist.pop(0)
        stalled = active & ~moved
        active &= ~stalled
        theta, loss, grad = torch.where(moved[:, None], new_theta, theta), torch.where(moved, new_loss, loss), \
            torch.where(moved[:, None], new_grad, grad)
    return LayerLogistic(weight=theta[:, :n_w].view(n_layers, dim, n_classes).clone(), bias=theta[:, n_w:].clone(),
                         mean=mean, scale=scale, n_iter=n_iter)


def _two_loop(grad: torch.Tensor, s_hist: list[torch.Tensor], y_hist: list[torch.Tensor]) -> torch.Tensor:
    """L-BFGS direction ``-H grad`` per layer; pairs with zero curvature (skipped updates) are ignored."""
    q = grad.clone()
    alphas = []
    rhos = []
    for s, yv in zip(reversed(s_hist), reversed(y_hist)):
        sy = (s * yv).sum(1)
        rho = torch.where(sy > 0, 1.0 / sy.clamp_min(1e-30), torch.zeros_like(sy))
        a = rho * (s * q).sum(1)
        q = q - a[:, None] * yv
        alphas.append(a)
        rhos.append(rho)
    if s_hist:
        s, yv = s_hist[-1], y_hist[-1]
        sy, yy = (s * yv).sum(1), (yv * yv).sum(1)
        gamma = torch.where((sy > 0) & (yy > 0), sy / yy.clamp_min(1e-30), torch.ones_like(sy))
        q = q * gamma[:, None]
    for (s, yv), a, rho in zip(zip(s_hist, y_hist), reversed(alphas), reversed(rhos)):
        b = rho * (yv * q).sum(1)
        q = q + (a - b)[:, None] * s
    return -q


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
