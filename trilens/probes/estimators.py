"""Probe estimators with scikit-learn's conventions: logistic (default), ridge and a small MLP.

They are ordinary estimators (``fit / predict / predict_proba / score``, ``get_params``, no work
in ``__init__``), so they go into ``cross_val_score``, pipelines and grid searches; any
scikit-learn classifier or regressor can be used in their place.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .batched import fit_layers, fit_ridge_layers, standardiser
from .solver import MAX_ITER


def _encode_classes(estimator: BaseEstimator, y: np.ndarray) -> np.ndarray:
    check_classification_targets(y)
    estimator.classes_, codes = np.unique(y, return_inverse=True)
    if len(estimator.classes_) < 2:
        raise ValueError(f"{type(estimator).__name__} needs samples of at least 2 classes; the data contain only one class: "
                         f"{estimator.classes_[0]!r}.")
    return codes


class _Classifier(ClassifierMixin, BaseEstimator):
    """Shared prediction for the torch-backed probes: subclasses implement ``_logits``."""

    def decision_function(self, X):
        logits = self._checked_logits(X)
        return (logits[:, 1] - logits[:, 0]) if logits.shape[1] == 2 else logits

    def predict_proba(self, X):
        return torch.from_numpy(self._checked_logits(X)).softmax(-1).numpy().astype(np.float64)

    def predict_log_proba(self, X):
        return torch.from_numpy(self._checked_logits(X)).log_softmax(-1).numpy().astype(np.float64)

    def predict(self, X):
        best = self._checked_logits(X).argmax(1)
        return self.classes_[best]

    def _checked_logits(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        with torch.no_grad():
            return self._logits(torch.as_tensor(X, dtype=torch.float64)).numpy()


class LogisticProbe(_Classifier):
    """Multinomial logistic regression (L2, L-BFGS) on standardised features — the default probe.

    Same objective as scikit-learn's ``LogisticRegression(C=C)``; it is the one-layer case of the
    trainer that ``probe_layers`` uses for every layer.
    """

    def __init__(self, C: float = 1.0, max_iter: int = MAX_ITER, tol: float = 1e-4, standardize: bool = True):
        self.C = C
        self.max_iter = max_iter
        self.tol = tol
        self.standardize = standardize

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        codes = _encode_classes(self, y)
        fitted = fit_layers(torch.as_tensor(X, dtype=torch.float32)[None], torch.as_tensor(codes), len(self.classes_),
                            C=self.C, max_iter=self.max_iter, tol=self.tol, standardize=self.standardize)
        coef = (fitted.weight[0].double() / fitted.scale[0].double()[:, None]).T  # [class, d] on the raw features
        intercept = fitted.bias[0].double() - coef @ fitted.mean[0]
        if len(self.classes_) == 2:  # scikit-learn's binary shapes: the logit of the second class over the first
            coef, intercept = coef[1:] - coef[:1], intercept[1:] - intercept[:1]
        self.coef_, self.intercept_ = coef.numpy(), intercept.numpy()
        self.n_iter_ = int(fitted.n_iter[0])
        if not bool(fitted.converged[0]):
            warnings.warn(f"LogisticProbe did not reach tol={self.tol} in {self.n_iter_} iterations (max_iter="
                          f"{self.max_iter}); raise max_iter or scale the features.", ConvergenceWarning, stacklevel=2)
        self._fitted = fitted
        return self

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self._fitted.logits(x.float()[None])[0].double()


class MLPProbe(_Classifier):
    """A one-hidden-layer MLP probe (ReLU, Adam, L2), for properties a linear probe may miss."""

    def __init__(self, hidden: int = 128, alpha: float = 1e-4, lr: float = 1e-2, epochs: int = 200,
                 batch_size: int = 256, standardize: bool = True, random_state: int = 0):
        self.hidden = hidden
        self.alpha = alpha
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.standardize = standardize
        self.random_state = random_state

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        codes = torch.as_tensor(_encode_classes(self, y))
        x = torch.as_tensor(X, dtype=torch.float32)
        mean, scale = standardiser(x[None], self.standardize)
        self.mean_, self.scale_ = mean[0], scale[0]
        z = (x - self.mean_) / self.scale_
        gen = torch.Generator().manual_seed(self.random_state)
        torch_rng = torch.random.fork_rng()
        with torch_rng:
            torch.manual_seed(self.random_state)
            net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], self.hidden), torch.nn.ReLU(),
                                      torch.nn.Linear(self.hidden, len(self.classes_)))
        opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.alpha)
        n = len(z)
        for _ in range(self.epochs):
            order = torch.randperm(n, generator=gen)
            for start in range(0, n, self.batch_size):
                idx = order[start:start + self.batch_size]
                loss = torch.nn.functional.cross_entropy(net(z[idx]), codes[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        self.net_ = net.eval().double()  # predictions in float64: the same for any subset of rows
        self.loss_ = float(loss.detach())
        return self

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net_((x - self.mean_.double()) / self.scale_.double())


class RidgeProbe(RegressorMixin, BaseEstimator):
    """Ridge regression on standardised features, for real-valued targets (scored by R^2)."""

    def __init__(self, alpha: float = 1.0, standardize: bool = True):
        self.alpha = alpha
        self.standardize = standardize

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], y_numeric=True, multi_output=True)
        fitted = fit_ridge_layers(torch.as_tensor(X, dtype=torch.float64)[None], torch.as_tensor(y, dtype=torch.float64),
                                  alpha=self.alpha, standardize=self.standardize)
        self._fitted = fitted
        coef = fitted.weight[0] / fitted.scale[0][:, None]
        self.coef_ = (coef.T if y.ndim == 2 else coef[:, 0]).numpy()
        intercept = fitted.bias[0] - (fitted.mean[0] / fitted.scale[0]) @ fitted.weight[0]
        self.intercept_ = intercept.numpy() if y.ndim == 2 else float(intercept[0])
        return self

    def predict(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        out = self._fitted.predict(torch.as_tensor(X, dtype=torch.float64)[None])[0].numpy()
        return out if np.ndim(self.coef_) == 2 else out[:, 0]
