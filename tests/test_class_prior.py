"""The closed-set prior: agreement against a dense brute force, merged hits, tuning with "off"
as a candidate."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval import class_prior as cp
from retrieval.errors import InputError
from retrieval.rerank_tune import set_identity_map
from retrieval.serving.evidence import array_evidence
from retrieval.serving.rules import Rule, class_posterior


def random_hits(rng: np.random.Generator, n: int, k: int, n_classes: int):
    scores = -np.sort(-rng.uniform(-1, 1, size=(n, k)), axis=1)
    labels = rng.integers(0, n_classes, size=(n, k))
    labels[rng.random((n, k)) < 0.1] = -1
    return scores.astype(np.float32), labels


def posterior_of(x: np.ndarray, gallery: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The nearest-photo rule's posterior of x against a labelled gallery, as search builds it."""
    evidence = array_evidence(x, gallery, labels, int(labels.max()) + 1)
    return class_posterior(Rule("nearest"), evidence)


@pytest.mark.parametrize("budget", [1 << 20, 7])  # 7 elements: one pair per block
def test_agreement_equals_the_dense_product(monkeypatch, budget: int) -> None:
    monkeypatch.setattr(cp, "ELEMENT_BUDGET", budget)
    p = np.random.default_rng(1).dirichlet(np.ones(6), size=25)
    np.testing.assert_allclose(cp.agreement_matrix(p), p @ p.T, atol=1e-6)
    a, b = np.array([0, 3, 24, 3]), np.array([24, 3, 0, 7])
    np.testing.assert_allclose(cp.agreement(p, a, b), (p[a] * p[b]).sum(axis=1), atol=1e-6)


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
    tuned = cp.tune_prior(val @ val.T, posterior_of(val, gallery, gallery_labels), val_labels)
    assert tuned.method == cp.METHOD
    assert tuned.params["weight"] in cp.WEIGHTS and tuned.params["weight"] > 0
    assert tuned.val_map > tuned.val_map_plain + 0.2
    assert tuned.val_map_plain == pytest.approx(set_identity_map(val @ val.T, val_labels))


def test_tuning_keeps_the_prior_off_on_a_tie() -> None:
    rng = np.random.default_rng(4)
    gallery, gallery_labels = flanks(rng, rng.normal(size=(5, 2, 32)), 4)
    val = gallery[::2] + 0.01 * rng.normal(size=(10, 32))  # near copies: every weight scores 1
    val /= np.linalg.norm(val, axis=1, keepdims=True)
    post = posterior_of(val, gallery, gallery_labels)
    tuned = cp.tune_prior(val @ val.T, post, gallery_labels[::2])
    assert tuned.val_map == pytest.approx(1.0)
    assert tuned.params == {"weight": 0.0}  # "off" is a candidate, and wins a tie


@pytest.mark.parametrize("weight", [1.5, -0.1, True, "0.5"])
def test_bad_weights_are_input_errors(weight) -> None:
    with pytest.raises(InputError):
        cp.check_weight(weight)
