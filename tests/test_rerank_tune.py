"""Re-ranking parameters chosen on val: the set metric against the Kaggle scorer, the tuner."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.errors import InputError
from retrieval.kaggle_score import holdout_pairs, identity_balanced_map
from retrieval.metrics import evaluate_retrieval
from retrieval.neighbours import (
    alpha_query_expansion,
    database_augmentation,
    expand_against_gallery,
)
from retrieval.pairs import score_pairs_from_matrix
from retrieval.rerank_tune import GRIDS, score_set, set_identity_map, tune_gallery_qe, tune_rerank


def _clustered(seed: int, n_ids: int = 7, per_id: int = 3, noise: float = 0.8):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_ids), per_id)
    x = rng.normal(size=(n_ids, 12))[labels] + noise * rng.normal(size=(len(labels), 12))
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_set_metric_equals_the_kaggle_pairs_scorer(seed):
    x, labels = _clustered(seed)
    labels[-1] = 99  # a singleton identity: skipped by both
    names = [f"img_{i:02d}.png" for i in range(len(labels))]
    similarity = x @ x.T
    pairs = holdout_pairs(names)
    expected, _ = identity_balanced_map(
        pairs,
        score_pairs_from_matrix(pairs, names, similarity),
        dict(zip(names, labels.astype(str), strict=True)),
    )
    assert set_identity_map(similarity, labels) == pytest.approx(expected, abs=1e-12)


def test_perfect_and_reversed_rankings():
    labels = np.array([0, 0, 1, 1])
    good = np.where(labels[:, None] == labels[None, :], 0.9, 0.1)
    assert set_identity_map(good, labels) == 1.0
    bad = 1.0 - good
    assert set_identity_map(bad, labels) == pytest.approx(1.0 / 3.0)
    with pytest.raises(InputError, match="nothing to score"):
        set_identity_map(good, np.arange(4))


@pytest.mark.parametrize("method", ["none", "dba", "kr"])
def test_tuner_returns_the_best_grid_point(method):
    x, labels = _clustered(5)
    tuned = tune_rerank(x, labels, method)
    assert tuned.method == method
    assert tuned.val_map_plain == pytest.approx(score_set(x, labels, "none", {}))
    assert tuned.val_map == pytest.approx(score_set(x, labels, method, tuned.params))
    usable = [p for p in GRIDS[method] if max(p.get("k", 0), p.get("k1", 0)) < len(labels) - 1]
    assert tuned.val_map == pytest.approx(max(score_set(x, labels, method, p) for p in usable))


def test_tuner_skips_neighbour_counts_larger_than_the_set():
    x, labels = _clustered(6, n_ids=2, per_id=3)
    tuned = tune_rerank(x, labels, "kr")
    assert tuned.params["k1"] < 5
    with pytest.raises(InputError, match="unknown"):
        tune_rerank(x, labels, "magic")


def _search_split(seed: int, query_seed: int | None = None, n_ids: int = 12, per_id: int = 4):
    """A labelled gallery of ``per_id`` photos per identity and noisier queries of the same
    identities (drawn with ``query_seed`` when given): the test-against-train protocol in
    miniature."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, 16))
    g_labels = np.repeat(np.arange(n_ids), per_id)
    gallery = centres[g_labels] + rng.normal(size=(len(g_labels), 16))
    if query_seed is not None:
        rng = np.random.default_rng(query_seed)
    q_labels = np.repeat(np.arange(n_ids), 2)
    queries = centres[q_labels] + 1.3 * rng.normal(size=(len(q_labels), 16))
    return queries, q_labels, gallery, g_labels


def test_expand_against_gallery_is_dba_then_query_expansion():
    q, _, g, _ = _search_split(0)
    expanded_q, expanded_g = expand_against_gallery(q, g, k=3, alpha=1.0)
    dba = database_augmentation(g, k=3, alpha=1.0)
    np.testing.assert_allclose(expanded_g, dba, atol=1e-6)
    np.testing.assert_allclose(expanded_q, alpha_query_expansion(q, dba, k=3, alpha=1.0), atol=1e-6)
    plain_q, plain_g = expand_against_gallery(q, g, k=0)
    np.testing.assert_allclose(np.linalg.norm(plain_g, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(plain_q, q / np.linalg.norm(q, axis=1, keepdims=True), atol=1e-6)


def test_gallery_tuner_returns_the_best_grid_point_or_no_expansion():
    q, q_labels, g, g_labels = _search_split(1)
    tuned = tune_gallery_qe(q, q_labels, g, g_labels)

    def val_map(params):
        eq, eg = expand_against_gallery(q, g, **params)
        return evaluate_retrieval(eq, q_labels, eg, g_labels).map

    assert tuned.val_map_plain == pytest.approx(evaluate_retrieval(q, q_labels, g, g_labels).map)
    assert tuned.val_map == pytest.approx(val_map(tuned.params))
    best = max([tuned.val_map_plain] + [val_map(p) for p in GRIDS["dba"]])
    assert tuned.val_map == pytest.approx(best)


def test_gallery_expansion_chosen_on_val_lifts_map_on_new_queries():
    val_q, val_labels, g, g_labels = _search_split(2)
    tuned = tune_gallery_qe(val_q, val_labels, g, g_labels)
    assert tuned.params["k"] > 0  # four photos per identity: averaging with them helps
    test_q, test_labels, _, _ = _search_split(2, query_seed=3)  # new queries, same gallery
    plain = evaluate_retrieval(test_q, test_labels, g, g_labels).map
    expanded_q, expanded_g = expand_against_gallery(test_q, g, **tuned.params)
    assert evaluate_retrieval(expanded_q, test_labels, expanded_g, g_labels).map > plain
