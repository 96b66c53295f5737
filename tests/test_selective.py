"""Selective-prediction metrics by hand: risk-coverage, AURC, coverage at accuracy, ECE, AUROC."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from retrieval.errors import InputError
from retrieval.selective import (
    aurc,
    coverage_at_accuracy,
    expected_calibration_error,
    risk_coverage,
    roc_auc,
)


def test_risk_coverage_by_hand_with_a_tie() -> None:
    confidence = np.array([0.9, 0.5, 0.7, 0.5])
    correct = np.array([True, True, False, False])
    curve = risk_coverage(confidence, correct)
    np.testing.assert_allclose(curve.coverage, [0.25, 0.5, 1.0])  # the two 0.5s go together
    np.testing.assert_allclose(curve.accuracy, [1.0, 0.5, 0.5])
    np.testing.assert_allclose(curve.threshold, [0.9, 0.7, 0.5])


def test_aurc_by_hand() -> None:
    # sorted: right, wrong, right -> error rates of the top 1, 2, 3: 0, 1/2, 1/3
    assert aurc(np.array([0.9, 0.8, 0.1]), np.array([True, False, True])) == pytest.approx(
        (0 + 1 / 2 + 1 / 3) / 3
    )
    # a tie spreads its errors: right and wrong at equal confidence -> 1/2, then 1/2
    assert aurc(np.array([0.5, 0.5]), np.array([True, False])) == pytest.approx(0.5)


def test_a_perfect_ranking_has_the_lowest_aurc() -> None:
    correct = np.array([True] * 7 + [False] * 3)
    best = aurc(np.linspace(1, 0, 10), correct)
    worst = aurc(np.linspace(0, 1, 10), correct)
    assert best < aurc(np.full(10, 0.5), correct) < worst


def test_coverage_at_accuracy_by_hand() -> None:
    confidence = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    correct = np.array([True, True, True, False, True])
    assert coverage_at_accuracy(confidence, correct, 1.0) == pytest.approx(0.6)
    assert coverage_at_accuracy(confidence, correct, 0.8) == pytest.approx(1.0)
    assert coverage_at_accuracy(np.array([0.9]), np.array([False]), 0.5) == 0.0


def test_ece_by_hand() -> None:
    # bin 0: p .05 vs 0 -> .05 x 1/4; bin 1: p .15 vs .5 -> .35 x 2/4; bin 9: .95 vs 1 -> .05 x 1/4
    probabilities = np.array([0.05, 0.15, 0.15, 0.95])
    outcomes = np.array([False, True, False, True])
    assert expected_calibration_error(probabilities, outcomes, n_bins=10) == pytest.approx(0.2)
    two = abs((0.05 + 0.15 + 0.15) / 3 - 1 / 3) * 3 / 4 + 0.05 / 4
    assert expected_calibration_error(probabilities, outcomes, n_bins=2) == pytest.approx(two)


def test_ece_edges_and_perfect_calibration() -> None:
    assert expected_calibration_error(np.array([0.0, 1.0]), np.array([False, True])) == 0.0
    p = np.array([0.25] * 4 + [0.75] * 4)
    y = np.array([1, 0, 0, 0, 1, 1, 1, 0], dtype=bool)
    assert expected_calibration_error(p, y) == pytest.approx(0.0)


@pytest.mark.parametrize("bad", [np.array([1.2]), np.array([-0.1]), np.array([math.nan])])
def test_ece_rejects_non_probabilities(bad: np.ndarray) -> None:
    with pytest.raises(InputError):
        expected_calibration_error(bad, np.array([True]))


def test_roc_auc_by_hand_with_ties() -> None:
    assert roc_auc(np.array([0.9, 0.5, 0.5]), np.array([0.5, 0.1])) == pytest.approx(5 / 6)
    assert roc_auc(np.array([0.3, 0.3]), np.array([0.3])) == 0.5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pos = rng.integers(0, 6, 40).astype(float)  # few distinct values: many ties
    neg = rng.integers(0, 4, 30).astype(float)
    expected = roc_auc_score(np.r_[np.ones(40), np.zeros(30)], np.r_[pos, neg])
    assert roc_auc(pos, neg) == pytest.approx(expected)
