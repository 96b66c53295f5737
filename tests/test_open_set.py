"""Open-set calibration: AUROC and ECE by hand, the false-accept threshold, the probability curve,
the held-out-class simulation and the JSON round trip."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import roc_auc_score

from retrieval.errors import InputError
from retrieval.open_set import (
    OpenSetCalibration,
    calibrate_from_scores,
    calibrate_open_set,
    choose_unknown_classes,
    expected_calibration_error,
    open_set_scores,
    roc_auc,
    simulate_open_set,
)
from retrieval.open_set_report import OpenSetReport, format_open_set_report, open_set_report


def synthetic_scores(seed: int, n_known: int = 400, n_unknown: int = 100):
    """Known top-1 cosines ~ N(0.8, 0.05), unknown ~ N(0.5, 0.1); a known match is correct
    with probability rising with its score (so the raw cosine is not itself calibrated)."""
    rng = np.random.default_rng(seed)
    known = rng.normal(0.8, 0.05, n_known)
    unknown = rng.normal(0.5, 0.1, n_unknown)
    correct = rng.random(n_known) < np.clip(0.6 + 4 * (known - 0.7), 0, 1)
    return known, correct, unknown


# ------------------------------------------------------------------ AUROC
def test_roc_auc_by_hand_with_ties() -> None:
    # pairs (pos, neg): (.9,.5)=1 (.9,.1)=1 (.5,.5)=.5 (.5,.1)=1 (.5,.5)=.5 (.5,.1)=1 -> 5/6
    assert roc_auc(np.array([0.9, 0.5, 0.5]), np.array([0.5, 0.1])) == pytest.approx(5 / 6)
    assert roc_auc(np.array([1.0]), np.array([0.0])) == 1.0
    assert roc_auc(np.array([0.0]), np.array([1.0])) == 0.0
    assert roc_auc(np.array([0.3, 0.3]), np.array([0.3])) == 0.5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pos = rng.integers(0, 6, 40).astype(float)  # few distinct values: many ties
    neg = rng.integers(0, 4, 30).astype(float)
    expected = roc_auc_score(np.r_[np.ones(40), np.zeros(30)], np.r_[pos, neg])
    assert roc_auc(pos, neg) == pytest.approx(expected)


# ------------------------------------------------------------------ ECE
def test_ece_by_hand() -> None:
    # bin 0: p .05 vs 0 -> .05 x 1/4; bin 1: p .15 vs .5 -> .35 x 2/4; bin 9: .95 vs 1 -> .05 x 1/4
    probabilities = np.array([0.05, 0.15, 0.15, 0.95])
    outcomes = np.array([False, True, False, True])
    assert expected_calibration_error(probabilities, outcomes) == pytest.approx(0.2)
    # two bins: [0, .5) holds .05, .15, .15 (mean 1/6... vs 1/3); [.5, 1] holds .95 vs 1
    two = abs((0.05 + 0.15 + 0.15) / 3 - 1 / 3) * 3 / 4 + 0.05 / 4
    assert expected_calibration_error(probabilities, outcomes, n_bins=2) == pytest.approx(two)


def test_ece_edges_and_perfect_calibration() -> None:
    # p = 1 lands in the last bin, p = 0 in the first: both exact, so ECE is 0
    assert expected_calibration_error(np.array([0.0, 1.0]), np.array([False, True])) == 0.0
    p = np.array([0.25] * 4 + [0.75] * 4)
    y = np.array([1, 0, 0, 0, 1, 1, 1, 0], dtype=bool)
    assert expected_calibration_error(p, y) == pytest.approx(0.0)


@pytest.mark.parametrize("bad", [np.array([1.2]), np.array([-0.1]), np.array([math.nan])])
def test_ece_rejects_non_probabilities(bad: np.ndarray) -> None:
    with pytest.raises(InputError):
        expected_calibration_error(bad, np.array([True]))


# ------------------------------------------------------------------ threshold
def test_threshold_rule_by_hand() -> None:
    unknown = np.linspace(0.1, 1.0, 10)  # 0.1 .. 1.0
    cal = calibrate_open_set(
        np.array([0.95, 0.9]), np.array([True, False]), unknown, target_false_accept_rate=0.2
    )
    # m = floor(0.2 * 10) = 2: threshold = 3rd highest unknown (0.8); 0.9 and 1.0 accepted
    assert cal.threshold_score == pytest.approx(0.8)
    assert cal.threshold_distance == pytest.approx(math.sqrt(2 - 2 * 0.8))
    assert cal.accepts(unknown).sum() == 2
    assert cal.accepts(np.array([0.8, 0.80001])).tolist() == [False, True]


def test_threshold_with_ties_never_exceeds_target() -> None:
    cal = calibrate_open_set(
        np.array([0.9]),
        np.array([True]),
        np.array([0.5, 0.5, 0.5, 0.2]),
        target_false_accept_rate=0.25,
    )
    assert cal.threshold_score == 0.5  # m = 1 -> 2nd highest, tied with the 1st
    assert cal.accepts(np.array([0.5, 0.5, 0.5, 0.2])).sum() == 0


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("target", [0.01, 0.05, 0.2])
def test_threshold_meets_target_far(seed: int, target: float) -> None:
    known, correct, unknown = synthetic_scores(seed)
    cal = calibrate_open_set(known, correct, unknown, target_false_accept_rate=target)
    far = cal.accepts(unknown).mean()
    assert far <= target
    assert far > target - 1 / unknown.size - 1e-12  # tight: one fewer accept is the most lost
    assert cal.accepts(known).mean() > 0.4  # even at 1% the separated known mostly pass


def test_looser_target_accepts_more_known() -> None:
    known, correct, unknown = synthetic_scores(0)
    rates = [
        calibrate_open_set(known, correct, unknown, target_false_accept_rate=t).accepts(known)
        for t in (0.0, 0.01, 0.05, 0.2)
    ]
    means = [r.mean() for r in rates]
    assert means == sorted(means) and means[-1] > 0.95


@pytest.mark.parametrize("target", [-0.1, 1.0, math.nan])
def test_bad_target_is_an_input_error(target: float) -> None:
    with pytest.raises(InputError, match="target_false_accept_rate"):
        calibrate_open_set(
            np.array([0.9]), np.array([True]), np.array([0.2]), target_false_accept_rate=target
        )


def test_no_correct_known_match_is_an_input_error() -> None:
    with pytest.raises(InputError, match="at least one True"):
        calibrate_open_set(np.array([0.9, 0.8]), np.array([False, False]), np.array([0.2]))


# ------------------------------------------------------------------ probability curve
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_isotonic_curve_is_monotonic_and_improves_ece(seed: int) -> None:
    known, correct, unknown = synthetic_scores(seed)
    cal = calibrate_open_set(known, correct, unknown)
    assert cal.curve.method == "isotonic" and "isotonic" in cal.note
    grid = np.linspace(-1, 1, 2001)
    p = cal.probability(grid)
    assert np.all(np.diff(p) >= 0) and p.min() >= 0 and p.max() <= 1
    assert cal.ece_after <= cal.ece_before
    assert cal.ece_before > 0.1  # raw cosine is far from a probability here
    # the stored curve reproduces sklearn's isotonic fit without sklearn objects
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
    iso.fit(np.r_[known, unknown], np.r_[correct, np.zeros(unknown.size, dtype=bool)])
    np.testing.assert_allclose(p, iso.predict(grid), atol=1e-12)


def test_few_points_fall_back_to_logistic() -> None:
    known, correct, unknown = synthetic_scores(0, n_known=30, n_unknown=10)
    cal = calibrate_open_set(known, correct, unknown)
    assert cal.curve.method == "logistic"
    assert "logistic" in cal.note and "40 queries" in cal.note
    assert cal.curve.coef > 0  # higher cosine, more likely the same individual
    p = cal.probability(np.linspace(-1, 1, 201))
    assert np.all(np.diff(p) >= 0) and p.min() >= 0 and p.max() <= 1
    assert cal.ece_after <= cal.ece_before


@pytest.mark.parametrize("n_known", [30, 400])  # logistic and isotonic
def test_json_round_trip_reproduces_probability(n_known: int) -> None:
    known, correct, unknown = synthetic_scores(5, n_known=n_known, n_unknown=n_known // 4)
    cal = calibrate_open_set(known, correct, unknown)
    loaded = OpenSetCalibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert loaded == cal
    grid = np.linspace(-1, 1, 301)
    np.testing.assert_array_equal(loaded.probability(grid), cal.probability(grid))
    np.testing.assert_array_equal(loaded.accepts(grid), cal.accepts(grid))


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d.pop("threshold_score"),
        lambda d: d["curve"].update(method="spline"),
        lambda d: d["curve"].update(scores=[]),
        lambda d: d.update(n_known="many"),
    ],
)
def test_damaged_calibration_is_an_input_error(damage) -> None:
    known, correct, unknown = synthetic_scores(1)
    data = calibrate_open_set(known, correct, unknown).to_dict()
    damage(data)
    with pytest.raises(InputError, match="open-set calibration is damaged"):
        OpenSetCalibration.from_dict(data)


def test_calibration_is_deterministic() -> None:
    known, correct, unknown = synthetic_scores(7)
    assert calibrate_open_set(known, correct, unknown) == calibrate_open_set(
        known, correct, unknown
    )


# ------------------------------------------------------------------ simulation
def test_choose_unknown_classes_is_seeded() -> None:
    classes = np.arange(20)
    first = choose_unknown_classes(classes, fraction=0.2, seed=3)
    assert first.tolist() == sorted(set(first.tolist())) and first.size == 4
    shuffled = np.random.default_rng(0).permutation(np.repeat(classes, 3))
    np.testing.assert_array_equal(choose_unknown_classes(shuffled, fraction=0.2, seed=3), first)
    picks = {tuple(choose_unknown_classes(classes, seed=s)) for s in range(5)}
    assert len(picks) > 1  # other seeds, other individuals


@pytest.mark.parametrize(("n", "fraction", "expected"), [(2, 0.2, 1), (3, 0.9, 2), (10, 0.25, 3)])
def test_choose_keeps_at_least_one_of_each(n: int, fraction: float, expected: int) -> None:
    assert choose_unknown_classes(np.arange(n), fraction=fraction).size == expected


@pytest.mark.parametrize(("classes", "fraction"), [([4], 0.2), ([1, 2], 0.0), ([1, 2], 1.0)])
def test_choose_rejects_impossible_requests(classes: list[int], fraction: float) -> None:
    with pytest.raises(InputError):
        choose_unknown_classes(np.array(classes), fraction=fraction)


def clustered(seed: int, n_classes: int = 10, per_gallery: int = 5, per_query: int = 3):
    """Unit embeddings around one random centre per class: (gallery labels, gallery, query
    labels, queries)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, 16))

    def draw(per: int):
        labels = np.repeat(np.arange(n_classes), per)
        x = centres[labels] + 0.3 * rng.normal(size=(labels.size, 16))
        return labels, (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return (*draw(per_gallery), *draw(per_query))


def test_simulate_removes_exactly_the_chosen_classes() -> None:
    g_labels, g_emb, q_labels, q_emb = clustered(0)
    unknown = np.array([2, 7])
    data = simulate_open_set(g_labels, g_emb, q_labels, q_emb, unknown)
    assert set(data.gallery_labels.tolist()) == set(range(10)) - {2, 7}
    np.testing.assert_array_equal(data.gallery_kept, ~np.isin(g_labels, unknown))
    np.testing.assert_array_equal(data.gallery_embeddings, g_emb[data.gallery_kept])
    np.testing.assert_array_equal(data.query_is_unknown, np.isin(q_labels, unknown))
    np.testing.assert_array_equal(data.query_embeddings, q_emb)  # every query is kept
    assert data.unknown_classes.tolist() == [2, 7]


def test_query_without_gallery_class_counts_as_unknown() -> None:
    g_labels, g_emb, q_labels, q_emb = clustered(0)
    keep = g_labels != 4  # class 4 has val queries but no gallery item at all
    data = simulate_open_set(g_labels[keep], g_emb[keep], q_labels, q_emb, np.array([1]))
    np.testing.assert_array_equal(data.query_is_unknown, np.isin(q_labels, [1, 4]))


@pytest.mark.parametrize("unknown", [[], list(range(10)), [99]])
def test_simulate_needs_known_and_unknown_queries(unknown: list[int]) -> None:
    g_labels, g_emb, q_labels, q_emb = clustered(0)
    with pytest.raises(InputError, match="hold out classes"):
        simulate_open_set(g_labels, g_emb, q_labels, q_emb, np.array(unknown, dtype=np.int64))


def test_end_to_end_report_on_clustered_embeddings() -> None:
    g_labels, g_emb, q_labels, q_emb = clustered(1, n_classes=12)
    unknown = choose_unknown_classes(np.unique(q_labels), fraction=0.25, seed=0)
    data = simulate_open_set(g_labels, g_emb, q_labels, q_emb, unknown)
    scores = open_set_scores(data, top_n=20)
    assert scores.top1_scores.shape == (36,)
    assert not scores.top1_correct[scores.is_unknown].any()
    assert scores.top1_correct[~scores.is_unknown].mean() > 0.9  # tight clusters
    assert np.all((scores.vote_confidence > 0) & (scores.vote_confidence <= 1))
    cal = calibrate_from_scores(scores, target_false_accept_rate=0.1)
    report = open_set_report(scores, cal)
    assert isinstance(report, OpenSetReport)
    assert (report.n_known, report.n_unknown) == (27, 9)
    assert report.false_accept_rate <= 0.1
    assert report.auroc_top1_cosine > 0.9
    assert report.auroc == max(report.auroc_top1_cosine, report.auroc_vote_confidence)
    assert report.threshold == cal.threshold_score
    json.dumps(report.to_dict(), allow_nan=False)  # NaN-free, JSON-ready
    text = format_open_set_report(report)
    assert f"{report.auroc_top1_cosine:.4f}" in text and f"{report.threshold:.4f}" in text
    assert "logistic" in text  # 36 queries: too few for isotonic, and the report says so


def test_report_nan_accuracy_becomes_none() -> None:
    g_labels, g_emb, q_labels, q_emb = clustered(2)
    data = simulate_open_set(g_labels, g_emb, q_labels, q_emb, np.array([0, 1]))
    scores = open_set_scores(data, top_n=5)
    cal = calibrate_from_scores(scores, target_false_accept_rate=0.0)
    strict = OpenSetCalibration.from_dict({**cal.to_dict(), "threshold_score": 2.0})
    report = open_set_report(scores, strict)  # accepts nothing
    assert report.known_accept_rate == 0.0 and math.isnan(report.accuracy_on_accepted_known)
    assert report.to_dict()["accuracy_on_accepted_known"] is None
