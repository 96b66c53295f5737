"""Selective-prediction metrics: how good a confidence is at ranking answers right before wrong.

Why ours: the definitions are short and must be exact on small val sets. Risk-coverage as in
Geifman & El-Yaniv (2017): answers sorted by confidence, the risk (error rate) of the top
``c`` share for every ``c``; AURC is its mean over all ``c``; ECE as in Guo et al. (2017) with
equal-width bins. A leaf: numpy only.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from retrieval.errors import InputError

ECE_BINS = 15


def accuracy_stderr(accuracy: float, n: int) -> float:
    """Standard error of an accuracy on n queries, Agresti-Coull adjusted (two successes and
    two failures added), so a perfect score on 55 photos does not read as certain."""
    adjusted = (accuracy * n + 2) / (n + 4)
    return math.sqrt(adjusted * (1 - adjusted) / (n + 4))


def _pair(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(confidence, dtype=np.float64)
    y = np.asarray(correct, dtype=bool)
    if c.ndim != 1 or c.shape != y.shape or c.size == 0 or not np.isfinite(c).all():
        raise InputError(
            f"need finite confidences and outcomes of one (N,) shape, N > 0; got {c.shape} "
            f"and {y.shape}"
        )
    return c, y


class RiskCoverage(NamedTuple):
    """Sorted by confidence, most confident first; one point per distinct confidence.

    coverage: (P,) share answered; accuracy: (P,) accuracy on those; threshold: (P,) the
    lowest confidence answered at that point.
    """

    coverage: np.ndarray
    accuracy: np.ndarray
    threshold: np.ndarray


def risk_coverage(confidence: np.ndarray, correct: np.ndarray) -> RiskCoverage:
    """The curve at every cut between distinct confidences (ties are answered together)."""
    c, y = _pair(confidence, correct)
    order = np.argsort(-c, kind="stable")
    c, y = c[order], y[order]
    right = np.cumsum(y)
    ends = np.flatnonzero(np.append(c[1:] != c[:-1], True))  # last index of each tie block
    n = np.arange(1, c.size + 1)
    return RiskCoverage(n[ends] / c.size, right[ends] / n[ends], c[ends])


def aurc(confidence: np.ndarray, correct: np.ndarray) -> float:
    """Area under the risk-coverage curve: the mean over k = 1..N of the error rate of the k
    most confident answers (ties in confidence averaged over their orders). Lower is better."""
    c, y = _pair(confidence, correct)
    order = np.argsort(-c, kind="stable")
    c, y = c[order], y[order].astype(np.float64)
    # within a tie block every order is equally likely: spread its errors evenly
    _, start, counts = np.unique(-c, return_index=True, return_counts=True)
    block = np.repeat(np.arange(start.size), counts)
    y = (np.bincount(block, weights=y) / counts)[block]
    errors = np.cumsum(1.0 - y)
    return float(np.mean(errors / np.arange(1, c.size + 1)))


def coverage_at_accuracy(confidence: np.ndarray, correct: np.ndarray, target: float) -> float:
    """The largest share answerable with accuracy >= target on it (0 when none is)."""
    curve = risk_coverage(confidence, correct)
    ok = curve.accuracy >= target - 1e-12
    return float(curve.coverage[ok].max()) if ok.any() else 0.0


def expected_calibration_error(
    probabilities: np.ndarray, outcomes: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """Sum over equal-width bins of (bin share) * |mean probability - observed frequency|.

    probabilities: (N,) float in [0, 1]; outcomes: (N,) bool. Bin of p = floor(p * n_bins),
    p = 1 in the last bin; empty bins add nothing.
    """
    p, y = _pair(probabilities, outcomes)
    if p.min() < 0 or p.max() > 1 or n_bins < 1:
        raise InputError(f"need probabilities in [0, 1] and n_bins >= 1, got n_bins={n_bins}")
    bins, count = reliability_bins(p, n_bins)
    gap = np.bincount(bins, weights=p, minlength=n_bins) - np.bincount(
        bins, weights=y.astype(np.float64), minlength=n_bins
    )
    return float(np.abs(gap).sum() / count.sum())


def reliability_bins(probabilities: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Bin index (N,) of each probability and the count (n_bins,) in each bin."""
    p = np.asarray(probabilities, dtype=np.float64)
    bins = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    return bins, np.bincount(bins, minlength=n_bins)


def roc_auc(scores_positive: np.ndarray, scores_negative: np.ndarray) -> float:
    """P(a random positive scores above a random negative), ties counted half (Mann-Whitney U).

    scores_positive: (P,) float; scores_negative: (N,) float; both non-empty and finite.
    """
    pos = np.asarray(scores_positive, dtype=np.float64)
    neg = np.sort(np.asarray(scores_negative, dtype=np.float64))
    if pos.ndim != 1 or neg.ndim != 1 or not pos.size or not neg.size:
        raise InputError(f"need non-empty 1-D scores, got {pos.shape} and {neg.shape}")
    if not (np.isfinite(pos).all() and np.isfinite(neg).all()):
        raise InputError("scores contain NaN or inf; pass finite scores")
    below = np.searchsorted(neg, pos, side="left")
    tied = np.searchsorted(neg, pos, side="right") - below
    return float((below.sum() + 0.5 * tied.sum()) / (pos.size * neg.size))
