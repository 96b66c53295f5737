"""The voting rule, rejection and calibration, checked against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from retrieval.decision import (
    CalibrationResult,
    Decision,
    Thresholds,
    accuracy_coverage,
    calibrate_thresholds,
    thresholds_from_dict,
    thresholds_to_dict,
    vote,
    vote_batch,
)
from retrieval.errors import InputError

OPEN = Thresholds(max_distance=2.0, min_margin=0.0)  # never rejects a query that has votes


def test_weights_by_hand() -> None:
    decision = vote(np.array([1, 2, 1]), np.array([0.5, 1.0, 0.25]), thresholds=OPEN)
    assert isinstance(decision, Decision)
    assert decision.votes == ((1, pytest.approx(6.0)), (2, pytest.approx(1.0)))
    assert decision.label == 1 and decision.accepted
    assert decision.confidence == pytest.approx(6 / 7)
    assert decision.margin == pytest.approx(5 / 7)
    assert decision.top1_distance == pytest.approx(0.25)
    assert decision.reason == "accepted"


def test_zero_distance_is_guarded_by_eps() -> None:
    decision = vote(np.array([3, 4]), np.array([0.0, 0.5]), eps=1e-6, thresholds=OPEN)
    assert decision.votes[0] == (3, pytest.approx(1e6))
    assert decision.confidence == pytest.approx(1e6 / (1e6 + 2))
    assert all(math.isfinite(weight) for _, weight in decision.votes)


def test_reject_when_nearest_is_too_far() -> None:
    thresholds = Thresholds(max_distance=1.2, min_margin=0.05)
    decision = vote(np.array([1, 1]), np.array([1.3, 1.4]), thresholds=thresholds)
    assert decision.label is None and not decision.accepted
    assert decision.reason == "reshoot recommended: nearest match too far (d=1.300 > 1.200)"
    assert decision.votes[0][0] == 1  # the evidence is kept for display


def test_reject_when_vote_is_split() -> None:
    decision = vote(np.array([1, 2]), np.array([0.5, 0.5]), thresholds=Thresholds())
    assert decision.label is None
    assert decision.margin == pytest.approx(0.0)
    assert decision.reason == (
        "reshoot recommended: ambiguous between 1 and 2 (margin 0.000 < 0.050)"
    )


def test_distance_check_comes_first() -> None:
    decision = vote(np.array([1, 2]), np.array([1.5, 1.5]), thresholds=Thresholds())
    assert "too far" in decision.reason


@pytest.mark.parametrize(("top_n", "winner"), [(1, 1), (2, 1), (4, 2)])
def test_top_n_truncation(top_n: int, winner: int) -> None:
    # class 1: 1/0.5 = 2; class 2: 1/0.6 + 1/0.7 + 1/0.8 = 4.345...
    labels, distances = np.array([1, 2, 2, 2]), np.array([0.5, 0.6, 0.7, 0.8])
    decision = vote(labels, distances, top_n=top_n, thresholds=OPEN)
    assert decision.label == winner
    assert sum(weight for _, weight in decision.votes) == pytest.approx(
        np.sum(1 / distances[:top_n])
    )


def test_padding_ignored_and_unsorted_rows_sorted() -> None:
    padded = vote(np.array([1, -1, -1]), np.array([0.5, np.inf, np.nan]), thresholds=OPEN)
    assert padded.votes == ((1, pytest.approx(2.0)),)
    assert padded.confidence == 1.0 and padded.margin == 1.0
    unsorted = vote(np.array([2, 1]), np.array([0.9, 0.1]), top_n=1, thresholds=OPEN)
    assert unsorted.label == 1 and unsorted.top1_distance == pytest.approx(0.1)


def test_no_neighbours_is_rejected() -> None:
    decision = vote(np.array([-1, -1]), np.array([np.inf, np.inf]), thresholds=OPEN)
    assert decision.label is None and decision.votes == ()
    assert decision.top1_distance == math.inf
    assert decision.reason.startswith("reshoot recommended")


def test_equal_votes_break_ties_by_class_index() -> None:
    decision = vote(np.array([5, 2]), np.array([0.5, 0.5]), thresholds=OPEN)
    assert [label for label, _ in decision.votes] == [2, 5]


@pytest.mark.parametrize(
    ("labels", "distances", "match"),
    [
        (np.array([1, 2]), np.array([0.5]), "equal length"),
        (np.array([1.0, 2.0]), np.array([0.5, 0.6]), "integers"),
        (np.array([1, 2]), np.array([0.5, -0.1]), ">= 0"),
        (np.array([1, 2]), np.array([0.5, np.nan]), "finite"),
    ],
)
def test_vote_rejects_bad_input(labels: np.ndarray, distances: np.ndarray, match: str) -> None:
    with pytest.raises(InputError, match=match):
        vote(labels, distances, thresholds=OPEN)


def test_vote_batch_equals_row_votes() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=(6, 8))
    distances = np.sort(rng.uniform(0.1, 1.5, size=(6, 8)), axis=1)
    thresholds = Thresholds(max_distance=1.0, min_margin=0.2)
    batch = vote_batch(labels, distances, top_n=5, thresholds=thresholds)
    assert batch == [
        vote(lab, dis, top_n=5, thresholds=thresholds)
        for lab, dis in zip(labels, distances, strict=True)
    ]


def test_accuracy_coverage_by_hand() -> None:
    decisions = [
        vote(np.array([1]), np.array([0.1]), thresholds=OPEN),  # accepted, right
        vote(np.array([2]), np.array([0.1]), thresholds=OPEN),  # accepted, wrong
        vote(np.array([1]), np.array([1.9]), thresholds=Thresholds()),  # rejected
        vote(np.array([3]), np.array([0.2]), thresholds=OPEN),  # accepted, right
    ]
    accuracy, coverage = accuracy_coverage(decisions, np.array([1, 1, 1, 3]))
    assert accuracy == pytest.approx(2 / 3) and coverage == pytest.approx(3 / 4)
    nothing = accuracy_coverage(decisions[2:3], np.array([1]))
    assert math.isnan(nothing[0]) and nothing[1] == 0.0


def test_thresholds_round_trip_and_validation() -> None:
    thresholds = Thresholds(max_distance=0.9, min_margin=0.1)
    data = thresholds_to_dict(thresholds)
    assert data == {"max_distance": 0.9, "min_margin": 0.1}
    assert thresholds_from_dict(data) == thresholds
    assert Thresholds.from_dict(thresholds.to_dict()) == thresholds
    with pytest.raises(InputError, match="exactly the keys"):
        thresholds_from_dict({"max_distance": 1.0})
    with pytest.raises(InputError, match="must be a number"):
        thresholds_from_dict({"max_distance": "far", "min_margin": 0.1})
    with pytest.raises(InputError, match="min_margin"):
        Thresholds(min_margin=1.5)
    with pytest.raises(InputError, match="max_distance"):
        Thresholds(max_distance=-0.1)


def _synthetic_validation(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """30 right answers near the gallery, 10 wrong ones far away; all votes unanimous."""
    n_right, n_wrong, k = 30, 10, 5
    true_labels = rng.integers(0, 5, size=n_right + n_wrong)
    labels = np.repeat(true_labels[:, None], k, axis=1)
    labels[n_right:] = (labels[n_right:] + 1) % 5  # wrong class, unanimous
    near = rng.uniform(0.2, 0.6, size=(n_right, 1))
    far = rng.uniform(0.9, 1.4, size=(n_wrong, 1))
    distances = np.vstack([near, far]) + np.linspace(0.0, 0.1, k)[None, :]
    return labels, distances, true_labels


def test_calibration_finds_the_known_distance_threshold() -> None:
    labels, distances, true_labels = _synthetic_validation(np.random.default_rng(1))
    result = calibrate_thresholds(labels, distances, true_labels, target_accuracy=1.0)
    assert isinstance(result, CalibrationResult)
    assert result.met_target and result.accuracy == 1.0
    assert result.coverage == pytest.approx(30 / 40)
    assert result.thresholds.max_distance == pytest.approx(distances[:30, 0].max())
    assert result.thresholds.min_margin == 0.0  # votes are unanimous: margin plays no part
    decisions = vote_batch(labels, distances, thresholds=result.thresholds)
    assert accuracy_coverage(decisions, true_labels) == pytest.approx((1.0, 0.75))


def test_calibration_finds_the_known_margin_threshold() -> None:
    # All at the same distance; right answers win 8 vs 0.75 (margin 0.83), wrong ones 6.75 vs 2
    # (margin 0.54), so only the margin can separate them.
    true_labels = np.arange(20) % 4
    labels = np.stack([true_labels] * 4 + [(true_labels + 1) % 4], axis=1)
    distances = np.full((20, 5), 0.5)
    distances[:, 4] = 4 / 3  # weight 0.75 for the fifth neighbour
    labels[15:, :3] = (true_labels[15:, None] + 1) % 4  # 3 of the 4 nearest now vote wrong
    result = calibrate_thresholds(labels, distances, true_labels, target_accuracy=1.0)
    assert result.met_target and result.accuracy == 1.0
    assert result.coverage == pytest.approx(15 / 20)
    decisions = vote_batch(labels, distances, thresholds=result.thresholds)
    wrong_margins = [d.margin for d in decisions[15:]]
    assert result.thresholds.min_margin > max(wrong_margins) - 1e-12
    assert all(d.accepted for d in decisions[:15]) and not any(d.accepted for d in decisions[15:])


def test_calibration_accepts_everything_when_target_is_easy() -> None:
    labels, distances, true_labels = _synthetic_validation(np.random.default_rng(2))
    result = calibrate_thresholds(labels, distances, true_labels, target_accuracy=0.7)
    assert result.met_target and result.coverage == 1.0
    assert result.accuracy == pytest.approx(0.75)


def test_calibration_flags_an_unreachable_target() -> None:
    labels, distances, true_labels = _synthetic_validation(np.random.default_rng(3))
    distances[30:] = np.linspace(0.01, 0.02, 5)  # wrong answers nearest of all, unanimous:
    # no threshold isolates the right ones
    result = calibrate_thresholds(labels, distances, true_labels, target_accuracy=0.99)
    assert not result.met_target
    assert result.target_accuracy == 0.99
    assert result.accuracy == pytest.approx(0.75)  # the best reachable: accept everything
    again = calibrate_thresholds(labels, distances, true_labels, target_accuracy=0.99)
    assert again == result  # deterministic


def test_calibration_rejects_bad_input() -> None:
    with pytest.raises(InputError, match="target_accuracy"):
        calibrate_thresholds(
            np.zeros((2, 3), int), np.ones((2, 3)), np.zeros(2, int), target_accuracy=1.5
        )
    with pytest.raises(InputError, match="no validation query"):
        calibrate_thresholds(-np.ones((2, 3), int), np.ones((2, 3)), np.zeros(2, int))
    with pytest.raises(InputError, match="true_labels"):
        calibrate_thresholds(np.zeros((2, 3), int), np.ones((2, 3)), np.zeros(3, int))


def test_ambiguity_reason_names_the_classes_when_given():
    decision = vote(
        np.array([0, 1]),
        np.array([0.5, 0.5]),
        thresholds=Thresholds(max_distance=2.0, min_margin=0.1),
        class_names=["lynx_a", "lynx_b"],
    )
    assert decision.label is None and "lynx_a and lynx_b" in decision.reason
