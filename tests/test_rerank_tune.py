"""Re-ranking parameters chosen on val: the set metric against the Kaggle scorer, the tuner."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.errors import InputError
from retrieval.kaggle_score import holdout_pairs, identity_balanced_map
from retrieval.pairs import score_pairs_from_matrix
from retrieval.rerank_tune import GRIDS, score_set, set_identity_map, tune_rerank


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
    with pytest.raises(InputError, match="two photos"):
        set_identity_map(good, np.arange(4))


@pytest.mark.parametrize("method", ["none", "qe", "kr"])
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
