"""Multinomial logistic regression by L-BFGS whose line search never reads the data.

The objective is scikit-learn's ``LogisticRegression``: ``C * sum(w_i * cross-entropy_i) + 0.5 * ||W||^2``
(intercept not penalised; for two classes ``W`` is the one logit-difference vector, as in scikit-learn),
divided by the total example weight, on standardised features. Reading the
``[n, d]`` features is the whole cost of an evaluation (two skinny products ``X @ W`` and ``X.T @ R``).
Along a search direction ``p`` the logits are affine, ``z + t * (X p)``, so once ``X p`` is known every
trial step of the line search costs only ``[n, classes]`` arithmetic; an iteration reads the data
exactly twice (``X p`` and the gradient ``X.T r``), where a generic L-BFGS reads it twice per trial.
The standardisation is folded into the weights: the standardised copy never exists.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .rows import ChunkedRows, Rows, feature_scale, split_mean

# Probes on real residual streams (correlated, near-separable features) need 200-300 L-BFGS iterations
# where planted data need 20: at 200 every MiniLM layer stopped short. Converged layers stop early.
MAX_ITER = 1000
# Centre the rows (one float32 copy, or per chunk as read) when a feature's mean exceeds this many times its
# scale: float32 products of uncentred rows keep ~7 - log10(ratio) digits of the centred signal.
CENTRE_ABOVE = 30.0


@dataclass
class LogisticFit:
    """Weights ``[d, k]`` and intercept ``[k]`` on standardised features ``(x - mean) / scale`` (mean in float64)."""

    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    scale: torch.Tensor
    n_iter: int
    converged: bool


class _Objective:
    """Loss, gradient and the 1-D restriction along a direction, for one layer's rows."""

    def __init__(self, rows: Rows | ChunkedRows, y: torch.Tensor, n_classes: int, C: float,
                 weight: torch.Tensor | None, standardize: bool):
        self.onehot = torch.nn.functional.one_hot(y.long(), n_classes).double()
        self.sw = None if weight is None else weight.double()
        total = float(rows.n if weight is None else self.sw.sum())
        self.norm = total
        # Two classes: scikit-learn fits one weight vector w (logit difference) with penalty ||w||^2 / 2. The
        # softmax pair (w0, w1) has w1 - w0 = w and, at the optimum, w0 = -w1, so its penalty is ||w||^2 / 4:
        # doubling it gives scikit-learn's objective, not one with C twice as large.
        self.lam = (2.0 if n_classes == 2 else 1.0) / (C * total)
        mean, var = rows.moments(self.sw)
        self.full_mean = mean
        self.scale = feature_scale(mean, var, total, standardize)
        self.rows = rows
        if bool((mean.abs() > CENTRE_ABOVE * self.scale).any()):
            shift, mean = split_mean(mean)  # products read the shifted rows; what is left of the mean is tiny
            self.rows = rows.centred(shift)
        self.mean = mean  # of the rows the products read

    def logits(self, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``[n, k]`` (float64) for standardised-space weights: one pass over the rows."""
        raw = w / self.scale[:, None]
        return self.rows.matmul(raw.float()).double() + (b - self.mean @ raw)

    def _weighted_sum(self, per_row: torch.Tensor) -> torch.Tensor:
        return (per_row.sum() if self.sw is None else self.sw @ per_row) / self.norm

    def gradient(self, z: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient in ``(w, b)`` at logits ``z``: one pass over the rows."""
        r = z.softmax(-1) - self.onehot
        if self.sw is not None:
            r = r * self.sw[:, None]
        r = r / self.norm
        gw = (self.rows.rmatmul(r.float()).double() - self.mean[:, None] * r.sum(0)) / self.scale[:, None]
        return gw + self.lam * w, r.sum(0)

    def along(self, z: torch.Tensor, zp: torch.Tensor, ww: float, wp: float, pp: float, t: float
              ) -> tuple[float, float, float]:
        """Loss, first and second derivative at ``t`` along a direction, from the logits alone."""
        logp = (z + t * zp).log_softmax(-1)
        p = logp.exp()
        loss = -self._weighted_sum((self.onehot * logp).sum(1)) + 0.5 * self.lam * (ww + 2 * t * wp + t * t * pp)
        pz = (p * zp).sum(1)
        slope = self._weighted_sum(pz - (self.onehot * zp).sum(1)) + self.lam * (wp + t * pp)
        curve = self._weighted_sum((p * zp * zp).sum(1) - pz * pz) + self.lam * pp
        return float(loss), float(slope), float(curve)


def _line_search(f: _Objective, z, zp, ww, wp, pp, t: float, c1: float = 1e-4, c2: float = 0.1,
                 max_steps: int = 40) -> tuple[float, float] | None:
    """A step meeting the strong Wolfe conditions (the loss is convex along the line): safeguarded Newton
    on the slope inside a shrinking bracket. -> (step, loss) or None if no step decreases the loss."""
    f0, d0, _ = f.along(z, zp, ww, wp, pp, 0.0)
    if d0 >= 0:
        return None
    lo, hi = 0.0, float("inf")
    for _ in range(max_steps):
        ft, dt, ht = f.along(z, zp, ww, wp, pp, t)
        armijo = ft <= f0 + c1 * t * d0
        if armijo and abs(dt) <= c2 * abs(d0):
            return t, ft
        if dt > 0 or not armijo:
            hi = t
        else:
            lo = t
        newton = t - dt / ht if ht > 0 else float("inf")
        if lo < newton < hi:
            t = newton
        else:
            t = 0.5 * (lo + hi) if hi < float("inf") else 2.0 * t
    return None


def fit_logistic(rows: Rows | ChunkedRows, y: torch.Tensor, n_classes: int, *, C: float = 1.0,
                 weight: torch.Tensor | None = None, max_iter: int = MAX_ITER, tol: float = 1e-4, history: int = 10,
                 standardize: bool = True) -> LogisticFit:
    """Fit one multinomial logistic regression to ``rows`` and labels ``y [n]`` (0..n_classes-1).

    Stops when the gradient's max-norm is at most ``tol`` (scikit-learn's criterion) or after
    ``max_iter`` iterations. ``weight [n]`` weighs examples (0 leaves an example out: how a fold of
    chunked rows is trained without copying it).
    """
    f = _Objective(rows, y, n_classes, C, weight, standardize)
    dim = rows.dim
    w = torch.zeros(dim, n_classes, dtype=torch.float64)
    b = torch.zeros(n_classes, dtype=torch.float64)
    z = torch.zeros(rows.n, n_classes, dtype=torch.float64)  # logits at w = 0, b = 0
    gw, gb = f.gradient(z, w)
    g = torch.cat([gw.flatten(), gb])
    s_hist: list[torch.Tensor] = []
    y_hist: list[torch.Tensor] = []
    rho: list[float] = []
    n_iter, converged = 0, False
    while n_iter < max_iter:
        if g.abs().max() <= tol:
            converged = True
            break
        # two-loop recursion: p = -H g
        q = g.clone()
        alpha = []
        for s_k, y_k, r_k in zip(reversed(s_hist), reversed(y_hist), reversed(rho)):
            a = r_k * float(s_k @ q)
            alpha.append(a)
            q -= a * y_k
        gamma = float(s_hist[-1] @ y_hist[-1]) / float(y_hist[-1] @ y_hist[-1]) if s_hist else 1.0
        q *= gamma
        for (s_k, y_k, r_k), a in zip(zip(s_hist, y_hist, rho), reversed(alpha)):
            q += (a - r_k * float(y_k @ q)) * s_k
        p = -q
        pw, pb = p[:-n_classes].view(dim, n_classes), p[-n_classes:]
        raw = pw / f.scale[:, None]
        zp = f.rows.matmul(raw.float()).double() + (pb - f.mean @ raw)
        # the first step has no curvature yet: start it at 1 / ||g||_1 as torch and scipy do
        t0 = 1.0 if s_hist else min(1.0, 1.0 / float(g.abs().sum()))
        found = _line_search(f, z, zp, float((w * w).sum()), float((w * pw).sum()), float((pw * pw).sum()), t0)
        if found is None:
            break
        t, _ = found
        w = w + t * pw
        b = b + t * pb
        z = z + t * zp
        gw, gb = f.gradient(z, w)
        g_new = torch.cat([gw.flatten(), gb])
        s_k, y_k = t * p, g_new - g
        sy = float(s_k @ y_k)
        if sy > 1e-12 * float(y_k @ y_k):
            s_hist.append(s_k)
            y_hist.append(y_k)
            rho.append(1.0 / sy)
            if len(s_hist) > history:
                s_hist.pop(0), y_hist.pop(0), rho.pop(0)
        g = g_new
        n_iter += 1
    else:
        converged = bool(g.abs().max() <= tol)
    return LogisticFit(weight=w.float(), bias=b.float(), mean=f.full_mean, scale=f.scale.float(), n_iter=n_iter,
                       converged=converged)
