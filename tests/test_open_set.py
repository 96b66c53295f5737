"""Open-set: the held-out-class simulation, the new-individual threshold in the decision's own
unit (the calibrated confidence), and the report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from retrieval.calibration.open_set import (
    choose_open_set_policy,
    choose_unknown_classes,
    open_set_answers,
    simulate_open_set,
)
from retrieval.calibration.policy import choose_policy
from retrieval.errors import InputError
from retrieval.open_set_report import OpenSetReport, format_open_set_report, open_set_report
from retrieval.serving.evidence import array_evidence


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


def _policy(g_labels, g_emb, q_labels, q_emb):
    """A policy chosen on the full gallery, as the product stores it before --open_set."""
    evidence = array_evidence(q_emb, g_emb, g_labels, int(g_labels.max()) + 1, need_means=True)
    return choose_policy(evidence, q_labels)


def test_end_to_end_report_on_clustered_embeddings() -> None:
    g_labels, g_emb, q_labels, q_emb = clustered(1, n_classes=12)
    policy = _policy(g_labels, g_emb, q_labels, q_emb)
    unknown = choose_unknown_classes(np.unique(q_labels), fraction=0.25, seed=0)
    data = simulate_open_set(g_labels, g_emb, q_labels, q_emb, unknown)
    answers = open_set_answers(data, policy, n_classes=12)
    assert answers.top1_scores.shape == (36,)
    assert not answers.correct[answers.is_unknown].any()
    assert answers.correct[~answers.is_unknown].mean() > 0.9  # tight clusters
    checked = choose_open_set_policy(answers, policy, 0.1)
    assert checked.unknown_min_confidence > 0 and checked.evidence["open_set"]["n_unknown"] == 9
    answers = open_set_answers(data, checked, n_classes=12)
    report = open_set_report(answers, checked.threshold, 0.1)
    assert isinstance(report, OpenSetReport)
    assert (report.n_known, report.n_unknown) == (27, 9)
    assert report.false_accept_rate <= 0.1
    assert report.auroc_top1_cosine > 0.9
    json.dumps(report.to_dict(), allow_nan=False)  # NaN-free, JSON-ready
    text = format_open_set_report(report)
    assert f"{report.auroc_confidence:.4f}" in text and f"{report.threshold:.4f}" in text


def test_stored_check_declines_new_individuals_in_decide() -> None:
    """With the threshold in the policy, decide itself declines what the check would."""
    g_labels, g_emb, q_labels, q_emb = clustered(3, n_classes=12)
    policy = _policy(g_labels, g_emb, q_labels, q_emb)
    data = simulate_open_set(g_labels, g_emb, q_labels, q_emb, np.array([0, 5, 9]))
    before = open_set_answers(data, policy, n_classes=12)
    checked = choose_open_set_policy(before, policy, 0.0)
    after = open_set_answers(data, checked, n_classes=12)
    assert not any(d.accepted for d, u in zip(after.decisions, after.is_unknown, strict=True) if u)
    # one unit: a decision is accepted exactly when its confidence reaches the threshold
    for d in after.decisions:
        assert d.accepted == (d.confidence >= checked.threshold)


@pytest.mark.parametrize("far", [-0.1, 1.0])
def test_bad_false_accept_rate_is_an_input_error(far: float) -> None:
    g_labels, g_emb, q_labels, q_emb = clustered(2)
    data = simulate_open_set(g_labels, g_emb, q_labels, q_emb, np.array([0, 1]))
    answers = open_set_answers(data, _policy(g_labels, g_emb, q_labels, q_emb), n_classes=10)
    with pytest.raises(InputError, match="false-accept"):
        choose_open_set_policy(answers, _policy(g_labels, g_emb, q_labels, q_emb), far)


def test_report_nan_accuracy_becomes_none() -> None:
    g_labels, g_emb, q_labels, q_emb = clustered(2)
    data = simulate_open_set(g_labels, g_emb, q_labels, q_emb, np.array([0, 1]))
    answers = open_set_answers(data, _policy(g_labels, g_emb, q_labels, q_emb), n_classes=10)
    report = open_set_report(answers, 1.5, 0.05)  # accepts nothing
    assert report.known_accept_rate == 0.0 and math.isnan(report.accuracy_on_accepted_known)
    assert report.to_dict()["accuracy_on_accepted_known"] is None
