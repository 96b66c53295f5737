"""The closed-set prior: posteriors by hand, agreement against a dense brute force, tuning."""

from __future__ import annotations

import math

import numpy as np
import pytest

from retrieval import class_prior as cp
from retrieval.errors import InputError
from retrieval.neighbours import top_k_cosine
from retrieval.rerank_tune import set_identity_map


def dense(posterior: cp.ClassPosterior, n_classes: int) -> np.ndarray:
    """The (N, C) posterior matrix the sparse form stands for."""
    out = np.zeros((posterior.labels.shape[0], n_classes))
    for i, (labels, weights) in enumerate(zip(*posterior, strict=True)):
        for label, weight in zip(labels, weights, strict=True):
            if label >= 0:
                out[i, label] += weight
    return out


def random_hits(rng: np.random.Generator, n: int, k: int, n_classes: int):
    scores = -np.sort(-rng.uniform(-1, 1, size=(n, k)), axis=1)
    labels = rng.integers(0, n_classes, size=(n, k))
    labels[rng.random((n, k)) < 0.1] = -1
    return scores.astype(np.float32), labels


def test_posterior_by_hand() -> None:
    scores = np.array([[0.9, 0.8, 0.7, 0.1]])
    labels = np.array([[1, 2, 1, -1]])
    post = cp.class_posterior(scores, labels, temperature=10.0)
    one, two = 1 + math.exp(-2), math.exp(-1)  # kernel exp(10 (s - 0.9)) summed per class
    expected = [one / (one + two), two / (one + two), 0.0, 0.0]
    np.testing.assert_allclose(post.weights[0], expected, rtol=1e-6)
    assert post.labels[0].tolist() == [1, 2, 1, -1]


def test_posterior_rows_sum_to_one_and_an_image_without_hits_gets_zeros() -> None:
    scores, labels = random_hits(np.random.default_rng(0), 30, 6, 4)
    labels[3] = -1
    post = cp.class_posterior(scores, labels, 30.0)
    sums = post.weights.sum(axis=1)
    assert sums[3] == 0.0
    np.testing.assert_allclose(np.delete(sums, 3), 1.0, rtol=1e-6)


def test_higher_temperature_trusts_the_nearest_hit_more() -> None:
    scores, labels = np.array([[0.8, 0.7, 0.6]]), np.array([[0, 1, 1]])
    soft = cp.class_posterior(scores, labels, 1.0).weights[0, 0]
    sharp = cp.class_posterior(scores, labels, 100.0).weights[0, 0]
    assert soft < 0.5 < sharp  # two class-1 hits outvote one when the kernel is flat


@pytest.mark.parametrize("budget", [1 << 20, 7])  # 7 elements: one pair per block
def test_agreement_equals_the_dense_product(monkeypatch, budget: int) -> None:
    monkeypatch.setattr(cp, "ELEMENT_BUDGET", budget)
    scores, labels = random_hits(np.random.default_rng(1), 25, 5, 6)
    post = cp.class_posterior(scores, labels, 20.0)
    p = dense(post, 6)
    np.testing.assert_allclose(cp.agreement_matrix(post), p @ p.T, atol=1e-6)
    a, b = np.array([0, 3, 24, 3]), np.array([24, 3, 0, 7])
    np.testing.assert_allclose(cp.agreement(post, a, b), (p[a] * p[b]).sum(axis=1), atol=1e-6)


def test_merge_hits_equals_sorting_both_lists() -> None:
    rng = np.random.default_rng(2)
    s1, l1 = random_hits(rng, 10, 4, 5)
    s2, l2 = random_hits(rng, 10, 3, 5)
    scores, labels = cp.merge_hits(s1, l1, s2, l2)
    assert scores.shape == labels.shape == (10, 4)
    for i in range(10):
        pool = sorted(
            (
                (s, lab)
                for s, lab in zip([*s1[i], *s2[i]], [*l1[i], *l2[i]], strict=True)
                if lab >= 0
            ),
            reverse=True,
        )[:4]
        got = [(s, lab) for s, lab in zip(scores[i], labels[i], strict=True) if lab >= 0]
        np.testing.assert_allclose([s for s, _ in got], [s for s, _ in pool], rtol=1e-6)
        assert sorted(lab for _, lab in got) == sorted(lab for _, lab in pool)


def flanks(
    rng: np.random.Generator, looks: np.ndarray, per_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Photos of individuals with two far-apart looks (flanks, ``looks``: (n_ids, 2, 32)); a
    photo shows one of them, alternately: embeddings (n_ids * per_id, 32) and labels."""
    n_ids = looks.shape[0]
    labels = np.repeat(np.arange(n_ids), per_id)
    side = np.tile(np.arange(per_id) % 2, n_ids)
    x = looks[labels, side] + 0.3 * rng.normal(size=(labels.size, 32))
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


def test_tuning_picks_a_weight_that_lifts_val_where_cosine_splits_the_flanks() -> None:
    rng = np.random.default_rng(3)
    looks = rng.normal(size=(8, 2, 32))
    gallery, gallery_labels = flanks(rng, looks, 6)
    val, val_labels = flanks(rng, looks, 2)  # a dog's two val photos show opposite flanks
    scores, rows = top_k_cosine(val, gallery, cp.TOP_K)
    tuned = cp.tune_prior(val @ val.T, scores, gallery_labels[rows], val_labels)
    assert tuned.method == cp.METHOD and tuned.params["temperature"] == cp.TEMPERATURE
    assert tuned.params["weight"] in cp.WEIGHTS
    assert tuned.val_map > tuned.val_map_plain + 0.2
    assert tuned.val_map_plain == pytest.approx(set_identity_map(val @ val.T, val_labels))


def test_tuning_keeps_the_default_on_a_tie() -> None:
    rng = np.random.default_rng(4)
    gallery, gallery_labels = flanks(rng, rng.normal(size=(5, 2, 32)), 4)
    val = gallery[::2] + 0.01 * rng.normal(size=(10, 32))  # near copies: every weight scores 1
    val /= np.linalg.norm(val, axis=1, keepdims=True)
    scores, rows = top_k_cosine(val, gallery, cp.TOP_K)
    tuned = cp.tune_prior(val @ val.T, scores, gallery_labels[rows], gallery_labels[::2])
    assert tuned.val_map == pytest.approx(1.0)
    assert tuned.params == cp.DEFAULT_PARAMS


@pytest.mark.parametrize(
    "temperature,weight", [(0.0, 0.5), (-1.0, 0.5), (30.0, 1.5), (30.0, True), ("30", 0.5)]
)
def test_bad_parameters_are_input_errors(temperature, weight) -> None:
    with pytest.raises(InputError):
        cp.check_params(temperature, weight)


def test_mismatched_hits_are_an_input_error() -> None:
    with pytest.raises(InputError, match="one \\(N, k\\)"):
        cp.class_posterior(np.zeros((2, 3)), np.zeros((2, 4), dtype=int), 30.0)
