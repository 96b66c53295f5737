"""Metrics against hand computations and sklearn's average_precision_score."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from retrieval import metrics as metrics_module
from retrieval.errors import InputError
from retrieval.metrics import (
    RetrievalMetrics,
    average_precision,
    confusion_matrix,
    confusion_pairs,
    evaluate_retrieval,
    identity_balanced_map,
    recall_at_k,
)


@pytest.mark.parametrize(
    ("relevant", "expected"),
    [
        ([1, 0, 1], (1 / 1 + 2 / 3) / 2),
        ([0, 1], 1 / 2),
        ([1, 1, 0, 0], 1.0),
        ([0, 0, 1, 0, 1], (1 / 3 + 2 / 5) / 2),
        ([0, 0, 0], 0.0),
        ([], 0.0),
    ],
)
def test_average_precision_by_hand(relevant: list[int], expected: float) -> None:
    assert average_precision(np.array(relevant, dtype=bool)) == pytest.approx(expected)


def test_average_precision_equals_sklearn_on_a_strict_ranking() -> None:
    rng = np.random.default_rng(0)
    relevant = rng.random(50) < 0.3
    scores = np.linspace(1.0, 0.0, 50)  # strictly decreasing: no ties
    assert average_precision(relevant) == pytest.approx(average_precision_score(relevant, scores))


def test_recall_at_k_by_hand() -> None:
    query_labels = np.array([0, 1, 2, 3])
    ranked = np.array([[0, 1, 1], [2, 1, 0], [0, 0, 1], [-1, -1, -1]])
    assert recall_at_k(query_labels, ranked, 1) == pytest.approx(1 / 4)
    assert recall_at_k(query_labels, ranked, 2) == pytest.approx(2 / 4)
    assert recall_at_k(query_labels, ranked, 3) == pytest.approx(2 / 4)
    with pytest.raises(InputError, match=r"1\.\.3"):
        recall_at_k(query_labels, ranked, 4)


def _angles(degrees: list[float]) -> np.ndarray:
    rad = np.deg2rad(degrees)
    return np.stack([np.cos(rad), np.sin(rad)], axis=1).astype(np.float32)


def test_evaluate_retrieval_by_hand() -> None:
    # Gallery on the unit circle; the query at 0 deg ranks gallery by angle distance.
    gallery = _angles([10, 20, 40, 80, 170])  # labels: 0, 1, 0, 1, 2
    gallery_labels = np.array([0, 1, 0, 1, 2])
    queries = _angles([0, 0, 175])
    query_labels = np.array([0, 1, 1])
    result = evaluate_retrieval(queries, query_labels, gallery, gallery_labels)
    # q0 (class 0): relevant at ranks 1, 3 -> (1 + 2/3)/2; q1 (class 1): ranks 2, 4 -> (1/2+2/4)/2
    # q2 (class 1) at 175 deg: ranking 170, 80, 40, 20, 10 -> relevant at 2 and 4 as well.
    ap = [(1 + 2 / 3) / 2, (1 / 2 + 2 / 4) / 2, (1 / 2 + 2 / 4) / 2]
    assert isinstance(result, RetrievalMetrics)
    assert result.n_queries == 3
    assert result.recall_at_1 == pytest.approx(1 / 3)
    assert result.recall_at_5 == pytest.approx(1.0)
    assert result.map == pytest.approx(np.mean(ap))
    assert result.per_class_ap == pytest.approx({0: ap[0], 1: np.mean(ap[1:])})
    assert result.identity_balanced_map == pytest.approx((ap[0] + np.mean(ap[1:])) / 2)


def test_identity_balanced_differs_from_micro_when_imbalanced() -> None:
    # Class 0 has four easy queries (AP 1); class 1 has one query whose match ranks second.
    gallery = _angles([0, 90])
    gallery_labels = np.array([0, 1])
    queries = _angles([1, 2, 3, 4, 5])
    query_labels = np.array([0, 0, 0, 0, 1])
    result = evaluate_retrieval(queries, query_labels, gallery, gallery_labels)
    assert result.map == pytest.approx((4 * 1.0 + 0.5) / 5)
    assert result.identity_balanced_map == pytest.approx((1.0 + 0.5) / 2)
    assert result.map != pytest.approx(result.identity_balanced_map)


def _sklearn_reference(queries, query_labels, gallery, gallery_labels, exclude_self=False):
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    aps, kept = [], []
    for i in range(len(q)):
        scores = g @ q[i]
        relevant = gallery_labels == query_labels[i]
        if exclude_self:
            scores, relevant = np.delete(scores, i), np.delete(relevant, i)
        if relevant.any():  # a query with nothing of its own to rank is not scored
            aps.append(average_precision_score(relevant, scores))
            kept.append(query_labels[i])
    aps, kept = np.array(aps), np.array(kept)
    per_class = [aps[kept == c].mean() for c in np.unique(kept)]
    return aps.mean(), float(np.mean(per_class))


@pytest.mark.parametrize("chunk_elements", [1 << 22, 7])
def test_evaluate_retrieval_matches_sklearn(
    chunk_elements: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics_module, "SCORE_CHUNK_ELEMENTS", chunk_elements)
    rng = np.random.default_rng(1)
    gallery, queries = rng.standard_normal((80, 8)), rng.standard_normal((25, 8))
    gallery_labels = rng.integers(0, 6, size=80)
    query_labels = rng.integers(0, 7, size=25)  # class 6 is absent from the gallery
    query_labels[0] = 6
    result = evaluate_retrieval(queries, query_labels, gallery, gallery_labels)
    micro, balanced = _sklearn_reference(queries, query_labels, gallery, gallery_labels)
    assert result.map == pytest.approx(micro, abs=1e-9)
    assert result.identity_balanced_map == pytest.approx(balanced, abs=1e-9)
    assert 6 not in result.per_class_ap
    assert result.n_unscorable == int((query_labels == 6).sum())


def test_exclude_self_matches_reference() -> None:
    rng = np.random.default_rng(2)
    embeddings = rng.standard_normal((40, 8))
    labels = rng.integers(0, 5, size=40)
    with_self = evaluate_retrieval(embeddings, labels, embeddings, labels)
    without = evaluate_retrieval(embeddings, labels, embeddings, labels, exclude_self=True)
    assert with_self.recall_at_1 == 1.0  # every query finds itself first
    micro, balanced = _sklearn_reference(embeddings, labels, embeddings, labels, True)
    assert without.map == pytest.approx(micro, abs=1e-9)
    assert without.identity_balanced_map == pytest.approx(balanced, abs=1e-9)
    assert without.recall_at_1 < 1.0


def test_query_class_missing_from_gallery_is_left_out_and_counted() -> None:
    """One rule everywhere: a query with nothing of its own to rank is not scored (as in
    PyTorch Metric Learning and Kaggle re-ID scoring), and the count says so."""
    gallery = _angles([0, 90])
    result = evaluate_retrieval(_angles([1, 1]), np.array([0, 5]), gallery, np.array([0, 1]))
    assert (result.n_queries, result.n_unscorable) == (1, 1)
    assert result.recall_at_1 == 1.0 and result.recall_at_5 == 1.0
    assert result.per_class_ap == {0: 1.0}
    assert result.map == 1.0 and result.identity_balanced_map == 1.0


def test_identity_balanced_map_by_hand() -> None:
    ap = np.array([1.0, 0.5, 0.2, 0.9])
    labels = np.array([0, 0, 1, 2])
    scorable = np.array([True, True, True, False])
    balanced, per_class = identity_balanced_map(ap, labels, scorable)
    assert per_class == {0: 0.75, 1: 0.2} and balanced == pytest.approx(0.475)
    with pytest.raises(InputError, match="nothing to score"):
        identity_balanced_map(ap, labels, np.zeros(4, dtype=bool))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"query_embeddings": np.ones((2, 3))}, "width"),
        ({"query_labels": np.array([0.0, 1.0])}, "integer"),
        ({"query_labels": np.array([0, 1, 2])}, "entries"),
        ({"query_embeddings": np.array([[1.0, 0.0], [0.0, 0.0]])}, "row 1 has zero"),
        ({"exclude_self": True}, "exclude_self"),
    ],
)
def test_evaluate_retrieval_rejects_bad_input(kwargs: dict, match: str) -> None:
    args = {
        "query_embeddings": np.array([[1.0, 0.0], [0.0, 1.0]]),
        "query_labels": np.array([0, 1]),
        "gallery_embeddings": np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]),
        "gallery_labels": np.array([0, 1, 1]),
    }
    args.update(kwargs)
    with pytest.raises(InputError, match=match):
        evaluate_retrieval(**args)


def test_confusion_matrix_by_hand_skips_rejections() -> None:
    true = np.array([0, 0, 1, 1, 2, 2, 2])
    pred = np.array([0, 1, 1, -1, 0, 0, 2])
    expected = np.array([[1, 1, 0], [0, 1, 0], [2, 0, 1]])
    matrix = confusion_matrix(true, pred, 3)
    assert matrix.dtype == np.int64
    np.testing.assert_array_equal(matrix, expected)
    with pytest.raises(InputError, match=r"-1\.\.2"):
        confusion_matrix(true, np.array([0, 1, 1, -2, 0, 0, 2]), 3)
    with pytest.raises(InputError, match=r"0\.\.2"):
        confusion_matrix(np.array([3]), np.array([0]), 3)


def test_confusion_pairs_most_frequent_first() -> None:
    names = ["ash", "birch", "cedar"]
    true = np.array([2, 2, 0, 1, 1, 1, 0])
    pred = np.array([0, 0, 1, 0, -1, 1, 0])
    assert confusion_pairs(true, pred, names) == [
        ("cedar", "ash", 2),
        ("ash", "birch", 1),
        ("birch", "ash", 1),
    ]
    assert confusion_pairs(true, pred, names, top_n=1) == [("cedar", "ash", 2)]
    assert confusion_pairs(true, true, names) == []
