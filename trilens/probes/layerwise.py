"""``probe_layers``: a probe per layer of every stack, with folds, a control task and cross-probing.

The default logistic probe fits every layer with the L-BFGS of ``solver.py`` on scikit-learn's objective
(on features in memory, or read in chunks from disk) and ridge solves all layers in one batched solve
(see ``batched.py``); any scikit-learn estimator is cloned and looped over the layers instead.
Folds group examples by text (copies of a text are one group), so neither the words of one sentence nor a
copy of a training text sit on both sides of a split.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from sklearn.base import clone, is_classifier, is_regressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, f1_score, r2_score
from sklearn.model_selection import GroupKFold, GroupShuffleSplit, StratifiedGroupKFold
from tqdm.auto import tqdm

from ..errors import InputError
from ..provenance import provenance
from ..sources import is_source, read_columns, read_rows
from .batched import LayerLogistic, fit_layers, fit_ridge_layers, fit_ridge_rows
from .representations import Features, features_from_model, features_from_store
from .rows import ChunkedRows, Rows
from .result import ProbeResult
from .solver import MAX_ITER

BUILTIN = ("logistic", "ridge", "mlp")


def control_labels(types: Sequence[str], labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Hewitt & Liang's control task: every type gets one random label, drawn from the label distribution."""
    rng = np.random.default_rng(seed)
    uniq = sorted(set(types))
    if labels.dtype.kind == "f":
        assigned = dict(zip(uniq, rng.choice(labels, size=len(uniq), replace=True)))
    else:
        values, counts = np.unique(labels, return_counts=True)
        assigned = dict(zip(uniq, rng.choice(values, size=len(uniq), p=counts / counts.sum())))
    return np.asarray([assigned[t] for t in types])


def _task_kind(probe: Any) -> str:
    if isinstance(probe, str):
        return "regression" if probe == "ridge" else "classification"
    if is_regressor(probe):
        return "regression"
    if is_classifier(probe):
        return "classification"
    raise InputError(f"probe must be one of {', '.join(BUILTIN)} or a scikit-learn classifier or regressor, not {probe!r}.")


def _splits(feat: Features, kind: str, cv: int, test_size: float | None, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    idx = np.arange(feat.n)
    n_groups = len(np.unique(feat.groups))
    if test_size is not None:
        if not 0 < test_size < 1:
            raise InputError(f"test_size must be between 0 and 1, not {test_size}.")
        return list(GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed).split(idx, groups=feat.groups))
    if cv < 2 or cv > n_groups:
        raise InputError(f"cv={cv} folds need between 2 and {n_groups} texts; pass a smaller cv or test_size=.")
    if kind == "classification":
        _, counts = np.unique(feat.labels, return_counts=True)
        if counts.min() < cv:
            splitter = GroupKFold(n_splits=cv, shuffle=True, random_state=seed)  # a class too rare to stratify
        else:
            splitter = StratifiedGroupKFold(n_splits=cv, shuffle=True, random_state=seed)
        return list(splitter.split(idx, feat.labels, groups=feat.groups))
    return list(GroupKFold(n_splits=cv, shuffle=True, random_state=seed).split(idx, groups=feat.groups))


def _scores(kind: str, y_true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    if kind == "regression":
        return {"r2": float(r2_score(y_true, pred))}
    return {"accuracy": float(accuracy_score(y_true, pred)), "macro_f1": float(f1_score(y_true, pred, average="macro"))}


@dataclass(frozen=True)
class Training:
    """How the built-in probes train: ``C`` (logistic, scikit-learn's inverse L2 strength), ``alpha`` (ridge)
    and the logistic solver's stopping rule (gradient max-norm ``tol`` within ``max_iter`` iterations)."""

    C: float = 1.0
    alpha: float = 1.0
    max_iter: int = MAX_ITER
    tol: float = 1e-4

    def __post_init__(self):
        if not self.C > 0 or not self.alpha >= 0 or self.max_iter < 1 or not self.tol > 0:
            raise InputError(f"need C > 0, alpha >= 0, max_iter >= 1 and tol > 0; got C={self.C}, alpha={self.alpha}, "
                             f"max_iter={self.max_iter}, tol={self.tol}.")


class Predictions(NamedTuple):
    """Each layer's predictions ``[layer, n_test]`` and the layers whose logistic probe did not converge."""

    values: np.ndarray
    unconverged: list[int]


def fit_predict_layers(x_train: torch.Tensor, y_train: np.ndarray, x_test: torch.Tensor, probe: Any, kind: str,
                       training: Training = Training(), constant_ok: bool = False) -> Predictions:
    """Train one probe per layer of ``x_train [layer, n, d]`` and predict ``x_test``.

    ``constant_ok``: a training split with one class predicts that class (a control task whose examples
    all share one word type has one label) instead of raising.
    """
    if kind == "classification" and len(np.unique(y_train)) < 2:
        if constant_ok:
            return Predictions(np.full((x_train.shape[0], x_test.shape[1]), y_train[0]), [])
        raise InputError(f"a training split holds one class only ({y_train[0]!r}): use fewer folds or more varied data.")
    if probe == "logistic":
        classes, codes = np.unique(y_train, return_inverse=True)
        fitted = fit_layers(x_train, torch.as_tensor(codes), len(classes), C=training.C, max_iter=training.max_iter,
                            tol=training.tol)
        return Predictions(classes[fitted.predict(x_test).numpy()], _unconverged(fitted))
    if probe == "ridge":
        ridge = fit_ridge_layers(x_train, torch.as_tensor(y_train.astype(np.float64)), alpha=training.alpha)
        return Predictions(ridge.predict(x_test)[..., 0].numpy(), [])
    if probe == "mlp":
        from .estimators import MLPProbe

        probe = MLPProbe()
    return Predictions(np.stack([clone(probe).fit(x_train[k].numpy(), y_train).predict(x_test[k].numpy())
                                 for k in range(x_train.shape[0])]), [])


def _unconverged(fitted: LayerLogistic) -> list[int]:
    return [int(k) for k in (~fitted.converged).nonzero().flatten()]


def layer_rows(x: torch.Tensor | list[ChunkedRows]) -> list[Rows | ChunkedRows]:
    """One ``Rows`` per layer of a ``[layer, n, d]`` tensor, or the per-layer ``ChunkedRows`` as they are."""
    return [Rows(x[k]) for k in range(x.shape[0])] if isinstance(x, torch.Tensor) else list(x)


def fit_predict_rows(train: Sequence[Rows | ChunkedRows], y: np.ndarray, train_index: np.ndarray,
                     test: Sequence[Rows | ChunkedRows], test_index: np.ndarray, probe: Any, kind: str,
                     training: Training = Training(), constant_ok: bool = False) -> Predictions:
    """``fit_predict_layers`` for features read in chunks (predictions ``[layer, len(test_index)]``).

    The logistic and ridge probes train on the chunks themselves (the training rows weighted 1, the
    others 0) and predict in one pass per layer, so no layer is ever held whole; the MLP and
    scikit-learn probes load one layer's training and test rows at a time.
    """
    y_train = y[train_index]
    weight = torch.zeros(len(y), dtype=torch.float64)
    weight[torch.as_tensor(train_index)] = 1.0
    if probe == "logistic" and kind == "classification" and len(np.unique(y_train)) >= 2:
        classes, codes = np.unique(y_train, return_inverse=True)
        full = np.zeros(len(y), dtype=np.int64)
        full[train_index] = codes
        fitted = fit_layers(list(train), torch.as_tensor(full), len(classes), C=training.C, weight=weight,
                            max_iter=training.max_iter, tol=training.tol)
        return Predictions(np.stack([classes[fitted.logits_rows(k, rows).argmax(-1).numpy()[test_index]]
                                     for k, rows in enumerate(test)]), _unconverged(fitted))
    if probe == "ridge":
        full = np.zeros(len(y), dtype=np.float64)
        full[train_index] = y_train.astype(np.float64)
        ridge = fit_ridge_rows(list(train), torch.as_tensor(full), weight=weight, alpha=training.alpha)
        return Predictions(np.stack([ridge.predict_rows(k, rows)[:, 0].numpy()[test_index] for k, rows in enumerate(test)]), [])
    per_layer = [fit_predict_layers(a.take(train_index)[None], y_train, b.take(test_index)[None], probe, kind, training,
                                    constant_ok=constant_ok) for a, b in zip(train, test)]
    return Predictions(np.concatenate([p.values for p in per_layer]), [k for k, p in enumerate(per_layer) if p.unconverged])


def _warn_unconverged(where: list[dict[str, Any]], total: int, training: Training) -> None:
    if where:
        layers = sorted({(w["stack"], w["layer"]) for w in where})
        shown = ", ".join(f"{s} {k}" for s, k in layers[:8]) + (" ..." if len(layers) > 8 else "")
        warnings.warn(f"{len(where)} of {total} logistic probes did not converge within max_iter={training.max_iter} "
                      f"(gradient above tol={training.tol}; layers: {shown}); their scores may be low. Raise max_iter, "
                      "or regularise more (a smaller C). The result's info['unconverged'] lists them.",
                      ConvergenceWarning, stacklevel=3)


def evaluate_features(feat: Features, *, probe: Any = "logistic", cv: int = 5, test_size: float | None = None,
                      control: bool = True, seed: int = 0, C: float = 1.0, alpha: float = 1.0, max_iter: int = MAX_ITER,
                      tol: float = 1e-4, progress: bool = False) -> ProbeResult:
    """Probe every layer of every stack in ``feat``: per fold, the task (and its control) scores.

    Logistic probes that do not converge within ``max_iter`` raise a ``ConvergenceWarning`` and are
    listed in the result's ``info["unconverged"]`` (stack, layer, fold, target).
    """
    if isinstance(probe, str) and probe not in BUILTIN:
        raise InputError(f"probe must be one of {', '.join(BUILTIN)} or a scikit-learn estimator, not {probe!r}.")
    training = Training(C=C, alpha=alpha, max_iter=max_iter, tol=tol)
    kind = _task_kind(probe)
    labels = feat.labels.astype(np.float64) if kind == "regression" else feat.labels
    if kind == "regression" and not np.isfinite(labels).all():
        raise InputError("regression labels must be finite numbers.")
    targets = {"task": labels}
    if control:
        targets["control"] = control_labels(feat.types, labels, seed)
    rows, unconverged = [], []
    splits = _splits(feat, kind, cv, test_size, seed)
    bar = tqdm(total=len(splits) * len(feat.x) * len(targets), desc="probing layers", unit="fit", disable=not progress)
    for fold, (tr, te) in enumerate(splits):
        for stack, x in feat.x.items():
            for target, y in targets.items():
                bar.set_postfix_str(f"fold {fold + 1}/{len(splits)} {stack} {target}")
                if isinstance(x, torch.Tensor):
                    pred = fit_predict_layers(x[:, tr], y[tr], x[:, te], probe, kind, training, constant_ok=target == "control")
                else:
                    per_layer = layer_rows(x)
                    pred = fit_predict_rows(per_layer, y, tr, per_layer, te, probe, kind, training,
                                            constant_ok=target == "control")
                for layer in range(len(pred.values)):
                    for metric, value in _scores(kind, y[te], pred.values[layer]).items():
                        rows.append({"stack": stack, "layer": layer, "target": target, "fold": fold, "metric": metric,
                                     "value": value})
                unconverged += [{"stack": stack, "layer": k, "fold": fold, "target": target} for k in pred.unconverged]
                bar.update()
    bar.close()
    _warn_unconverged(unconverged, sum(_layer_count(x) for x in feat.x.values()) * len(splits) * len(targets), training)
    n_classes = len(np.unique(labels)) if kind == "classification" else None
    name = probe if isinstance(probe, str) else type(probe).__name__
    params = {"probe": name, "cv": cv, "test_size": test_size, "control": control, "seed": seed, **_training_info(probe, training)}
    info = provenance(None, "layerwise probe", params, feat.n, **feat.info, probe=name, kind=kind, n=feat.n,
                      n_texts=int(len(np.unique(feat.groups))), folds=cv if test_size is None else 1, test_size=test_size,
                      seed=seed, n_classes=n_classes, **_training_info(probe, training), unconverged=unconverged,
                      majority=float(np.unique(labels, return_counts=True)[1].max() / feat.n) if kind == "classification" else None)
    return ProbeResult(rows, info)


def _layer_count(x: torch.Tensor | list[ChunkedRows]) -> int:
    return x.shape[0] if isinstance(x, torch.Tensor) else len(x)


def _training_info(probe: Any, training: Training) -> dict[str, Any]:
    """The settings that shaped a built-in probe, for the result's provenance."""
    if probe == "logistic":
        return {"C": training.C, "max_iter": training.max_iter, "tol": training.tol}
    return {"alpha": training.alpha} if probe == "ridge" else {}


def probe_layers(source: Any, inputs: Sequence[Any] | None = None, labels: Sequence[Any] | None = None, *,
                 level: str = "sentence", pooling: str | int = "mean", subword: str = "first",
                 stacks: Sequence[str] | None = None, probe: Any = "logistic", cv: int = 5, test_size: float | None = None,
                 control: bool = True, seed: int = 0, C: float = 1.0, alpha: float = 1.0, max_iter: int = MAX_ITER,
                 tol: float = 1e-4, batch_size: int = 32, truncate: bool = False, tokenizer: Any = None,
                 on_disk: bool | str = False, progress: bool = True, split: str | None = None,
                 text_column: str = "text", label_column: str = "label") -> ProbeResult:
    """How well a probe decodes ``labels`` from every layer of ``source``.

    Args:
        source: a loaded ``Model`` (then ``inputs`` are its texts, or (source, target) pairs), an
            ``ActivationStore`` of residual sites (``inputs`` optional: the stored texts, needed for
            word labels), or ``Features`` already collected.
        labels: one per text (``level="sentence"``), or one list of word labels per text
            (``level="token"``; words split on whitespace, None skips a word).
        pooling: ``first``/``cls``, ``mean``, ``last`` or a token position (sentence level).
        subword: ``first``, ``last`` or ``mean`` sub-word token of each word (token level).
        probe: ``logistic`` (default; all layers batched), ``ridge`` (real-valued labels), ``mlp``,
            or any scikit-learn classifier / regressor.
        cv: k-fold cross-validation, folds grouped by text.
        test_size: instead of ``cv``, one grouped train/test split with this share of the texts held out.
        control: also train on Hewitt & Liang control labels and report selectivity.
        C: the logistic probe's inverse L2 strength (scikit-learn's ``C``).
        max_iter: the logistic probe's most iterations; a probe that does not converge warns and is listed in
            ``info["unconverged"]``.
        tol: the logistic probe's stopping tolerance.
        alpha: the ridge probe's L2 strength.
        on_disk: (a store source) keep the features in files, not in memory — True for a temporary
            folder, or a folder — and train the logistic or ridge probe on them in chunks: for data sets whose
            per-layer vectors do not fit in memory (each pass re-reads them).
        split: where ``inputs`` is a data source (a ``datasets.Dataset`` or ``DatasetDict``, a ``save_to_disk``
            folder, a Parquet, JSON-lines or CSV ``Path``): the split of a dataset dict.
        text_column: the data source's column of texts.
        label_column: the data source's column of labels (read unless ``labels`` are given).
    """
    training = Training(C=C, alpha=alpha, max_iter=max_iter, tol=tol)  # bad settings fail before the model runs
    from ..capture.store import ActivationStore

    if is_source(inputs) and isinstance(source, ActivationStore):
        # the store holds the activations: its texts are read a chunk at a time (to check they are the stored ones,
        # and to align word labels), and only the label column is read whole
        from ..source_stream import StreamedRows

        if labels is None:
            labels = read_columns(inputs, [label_column], split=split)[label_column]
        inputs = StreamedRows(inputs, split=split, text_column=text_column)
    elif is_source(inputs):
        rows = read_rows(inputs, split=split, text_column=text_column, label_column=None if labels else label_column)
        inputs, labels = rows.inputs, labels if labels is not None else rows.labels
    if isinstance(source, Features):
        feat = source
    else:
        if labels is None:
            raise InputError("pass labels: one per text (or one list of word labels per text at token level).")
        if isinstance(source, ActivationStore):
            feat = features_from_store(source, labels, level=level, pooling=pooling, subword=subword, stacks=stacks,
                                       texts=inputs, tokenizer=tokenizer, on_disk=on_disk, progress=progress)
        else:
            if on_disk:
                raise InputError("on_disk= applies to probing from an ActivationStore; capture the texts into a store "
                                 "first (trilens.capture.dataset.capture_dataset) to probe more than fits in memory.")
            if inputs is None:
                raise InputError("pass the texts (inputs) to run the model on.")
            feat = features_from_model(source, inputs, labels, level=level, pooling=pooling, subword=subword,
                                       stacks=stacks, batch_size=batch_size, truncate=truncate, progress=progress)
    return evaluate_features(feat, probe=probe, cv=cv, test_size=test_size, control=control, seed=seed, C=training.C,
                             alpha=training.alpha, max_iter=training.max_iter, tol=training.tol, progress=progress)


def cross_probe(train: Features, test: Features, *, probe: Any = "logistic", C: float = 1.0, alpha: float = 1.0,
                max_iter: int = MAX_ITER, tol: float = 1e-4, train_name: str = "A", test_name: str = "B") -> ProbeResult:
    """Train on every example of ``train`` and score on ``test``, layer by layer (data set A -> B, or model A -> B)."""
    training = Training(C=C, alpha=alpha, max_iter=max_iter, tol=tol)
    kind = _task_kind(probe)
    rows, unconverged = [], []
    for stack, x in train.x.items():
        if stack not in test.x:
            raise InputError(f"the test features have no {stack!r} stack; they have {list(test.x)}.")
        xt = test.x[stack]
        a, b = layer_rows(x), layer_rows(xt)
        if len(a) != len(b) or a[0].dim != b[0].dim:
            raise InputError(f"cross-probing needs the same layers and width: train {stack} is ({len(a)}, {a[0].dim}) "
                             f"(layers, d), test is ({len(b)}, {b[0].dim}).")
        y_train = train.labels.astype(np.float64) if kind == "regression" else train.labels
        y_test = test.labels.astype(np.float64) if kind == "regression" else test.labels
        if isinstance(x, torch.Tensor) and isinstance(xt, torch.Tensor):
            pred = fit_predict_layers(x, y_train, xt, probe, kind, training)
        else:
            pred = fit_predict_rows(a, y_train, np.arange(train.n), b, np.arange(test.n), probe, kind, training)
        for layer in range(len(pred.values)):
            for metric, value in _scores(kind, y_test, pred.values[layer]).items():
                rows.append({"stack": stack, "layer": layer, "target": "task", "fold": 0, "metric": metric, "value": value})
        unconverged += [{"stack": stack, "layer": k, "fold": 0, "target": "task"} for k in pred.unconverged]
    _warn_unconverged(unconverged, sum(_layer_count(x) for x in train.x.values()), training)
    name = probe if isinstance(probe, str) else type(probe).__name__
    info = provenance(None, "cross probe", {"probe": name, **_training_info(probe, training)}, test.n,
                      **{k: v for k, v in train.info.items() if k in ("model", "architecture", "family", "fingerprint")},
                      probe=name, kind=kind, cross=True, train=train_name, test=test_name, n_train=train.n, n=test.n,
                      folds=1, **_training_info(probe, training), unconverged=unconverged)
    return ProbeResult(rows, info)
