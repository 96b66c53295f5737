"""Fitting the confidence calibrator on val answers: logistic over all features or isotonic on
one, chosen by cross-validated log-loss (val sets are small: 55 photos on dogs_kaggle).

Why both: isotonic regression (wildlife-tools calibrates similarities this way) is free of
shape assumptions but needs many points; a 5-parameter logistic fit is stable on few. The
out-of-fold probabilities are kept, so the reject threshold and ECE are read on answers the
calibrator did not see.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from retrieval.errors import InputError
from retrieval.serving.confidence import FEATURES, Calibrator

N_FOLDS = 5
LOGISTIC_C = 1.0  # default L2 strength: keeps separable val sets finite
ISOTONIC_FEATURES = ("share", "top_score", "margin")
_P_FLOOR = 1e-4  # log-loss of a flat-out wrong 0/1 isotonic step stays finite


class CalibratorFit(NamedTuple):
    calibrator: Calibrator
    out_of_fold: np.ndarray  # (Q,) P(correct) from fits that did not see the query
    log_loss: dict[str, float]  # cross-validated, per candidate


def _fit(method: str, feature: str, x: np.ndarray, y: np.ndarray) -> Calibrator:
    if np.unique(y).size < 2:  # every val answer right (or wrong): a constant, and Laplace's
        value = float((y.sum() + 1) / (y.size + 2))  # rule keeps it off a certain 1 (or 0)
        return Calibrator("isotonic", "share", xs=(0.0,), ys=(value,))
    if method == "logistic":
        center, scale = x.mean(axis=0), x.std(axis=0)
        scale = np.where(scale > 1e-12, scale, 1.0)
        model = LogisticRegression(C=LOGISTIC_C).fit((x - center) / scale, y.astype(int))
        return Calibrator(
            "logistic",
            coef=tuple(float(v) for v in model.coef_[0]),
            intercept=float(model.intercept_[0]),
            center=tuple(float(v) for v in center),
            scale=tuple(float(v) for v in scale),
        )
    column = x[:, FEATURES.index(feature)]
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(column, y)
    return Calibrator(
        "isotonic",
        feature,
        xs=tuple(float(v) for v in iso.X_thresholds_),
        ys=tuple(float(v) for v in iso.y_thresholds_),
    )


def _folds(n: int, n_folds: int) -> np.ndarray:
    """Fold of each row: interleaved, so no RNG is needed and every fold spans the set."""
    return np.arange(n) % min(n_folds, n)


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, _P_FLOOR, 1 - _P_FLOOR)
    return float(-np.mean(np.where(y, np.log(p), np.log(1 - p))))


def fit_calibrator(features: np.ndarray, correct: np.ndarray, n_folds: int = N_FOLDS):
    """The candidate with the lowest cross-validated log-loss, refitted on all rows.

    features: (Q, 4) in ``FEATURES`` order; correct: (Q,) bool, whether the answer was right.
    Ties keep the earlier candidate (logistic first). Returns a :class:`CalibratorFit`.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(correct, dtype=bool)
    if x.ndim != 2 or x.shape != (y.size, len(FEATURES)) or y.size < 2:
        raise InputError(f"need (Q, {len(FEATURES)}) features for Q >= 2 answers, got {x.shape}")
    candidates = [("logistic", "share")] + [("isotonic", f) for f in ISOTONIC_FEATURES]
    fold = _folds(y.size, n_folds)
    losses, oof = {}, {}
    for method, feature in candidates:
        name = "logistic" if method == "logistic" else f"isotonic({feature})"
        out = np.empty(y.size)
        for f in np.unique(fold):
            train = fold != f
            out[~train] = _fit(method, feature, x[train], y[train])(x[~train])
        losses[name], oof[name] = log_loss(out, y), out
    best = min(losses, key=lambda key: (losses[key], list(losses).index(key)))
    method, feature = candidates[list(losses).index(best)]
    return CalibratorFit(_fit(method, feature, x, y), oof[best], losses)
