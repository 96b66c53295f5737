"""The reject threshold: the lowest confidence that keeps a target accuracy on what is accepted.

Read on out-of-fold confidences (the calibrator did not see these answers), so the choice is
not flattered by the fit.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from retrieval.selective import risk_coverage


class ThresholdChoice(NamedTuple):
    min_confidence: float
    accuracy: float  # on the accepted val answers (NaN: none accepted)
    coverage: float  # share of val answers accepted
    met_target: bool


def threshold_for_accuracy(
    confidence: np.ndarray, correct: np.ndarray, target: float
) -> ThresholdChoice:
    """The cut with the largest coverage whose accepted answers (confidence >= cut) reach
    ``target`` accuracy. None reaches it: the cut is ``target`` itself, which a calibrated
    confidence honours on average, and ``met_target`` is False."""
    curve = risk_coverage(confidence, correct)
    ok = curve.accuracy >= target - 1e-12
    if ok.any():
        i = int(np.flatnonzero(ok)[np.argmax(curve.coverage[ok])])
        return ThresholdChoice(
            float(curve.threshold[i]), curve.accuracy[i], curve.coverage[i], True
        )
    c = np.asarray(confidence, dtype=np.float64)
    accepted = c >= target
    accuracy = float(np.asarray(correct)[accepted].mean()) if accepted.any() else math.nan
    return ThresholdChoice(float(target), accuracy, float(accepted.mean()), False)


def threshold_for_unknowns(unknown_confidence: np.ndarray, false_accept_rate: float) -> float:
    """The lowest cut that accepts at most ``false_accept_rate`` of the unknown queries (their
    answer is always wrong): just above the (m + 1)-th highest, m = floor(rate * U)."""
    u = np.sort(np.asarray(unknown_confidence, dtype=np.float64))[::-1]
    m = math.floor(false_accept_rate * u.size + 1e-9)
    if m >= u.size:
        return 0.0
    return float(np.nextafter(u[m], np.inf))
