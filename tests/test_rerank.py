"""Re-ranking against hand computations and the paper's dense reference code.

The reference below follows Zhong et al.'s published ``re_ranking(q_g_dist, q_q_dist,
g_g_dist, k1, k2, lambda_value)`` line by line (dense (Q+G)^2 matrices, Python loops), so the
sparse, blocked implementation is checked against the original algorithm on small random data.
"""

from __future__ import annotations

import numpy as np
import pytest

from retrieval import neighbours
from retrieval import rerank as rerank_module
from retrieval.errors import InputError
from retrieval.metrics import average_precision
from retrieval.neighbours import alpha_query_expansion, database_augmentation
from retrieval.rerank import (
    RerankResult,
    k_reciprocal_rerank,
    k_reciprocal_topk,
    rerank_similarity_matrix,
)


def _reference_all(original_dist, query_num, k1, k2, lambda_value):
    """The paper's code from the concatenated distance matrix on; returns final_dist[:query_num]."""
    original_dist = np.power(original_dist, 2).astype(np.float32)
    original_dist = np.transpose(1.0 * original_dist / np.max(original_dist, axis=0))
    V = np.zeros_like(original_dist).astype(np.float32)
    initial_rank = np.argsort(original_dist).astype(np.int32)
    all_num = original_dist.shape[0]
    for i in range(all_num):
        forward_k_neigh_index = initial_rank[i, : k1 + 1]
        backward_k_neigh_index = initial_rank[forward_k_neigh_index, : k1 + 1]
        fi = np.where(backward_k_neigh_index == i)[0]
        k_reciprocal_index = forward_k_neigh_index[fi]
        k_reciprocal_expansion_index = k_reciprocal_index
        for j in range(len(k_reciprocal_index)):
            candidate = k_reciprocal_index[j]
            half = int(np.around(k1 / 2.0)) + 1
            candidate_forward_k_neigh_index = initial_rank[candidate, :half]
            candidate_backward_k_neigh_index = initial_rank[candidate_forward_k_neigh_index, :half]
            fi_candidate = np.where(candidate_backward_k_neigh_index == candidate)[0]
            candidate_k_reciprocal_index = candidate_forward_k_neigh_index[fi_candidate]
            if len(
                np.intersect1d(candidate_k_reciprocal_index, k_reciprocal_index)
            ) > 2.0 / 3 * len(candidate_k_reciprocal_index):
                k_reciprocal_expansion_index = np.append(
                    k_reciprocal_expansion_index, candidate_k_reciprocal_index
                )
        k_reciprocal_expansion_index = np.unique(k_reciprocal_expansion_index)
        weight = np.exp(-original_dist[i, k_reciprocal_expansion_index])
        V[i, k_reciprocal_expansion_index] = 1.0 * weight / np.sum(weight)
    original_dist = original_dist[:query_num,]
    if k2 != 1:
        V_qe = np.zeros_like(V, dtype=np.float32)
        for i in range(all_num):
            V_qe[i, :] = np.mean(V[initial_rank[i, :k2], :], axis=0)
        V = V_qe
    invIndex = [np.where(V[:, i] != 0)[0] for i in range(all_num)]
    jaccard_dist = np.zeros_like(original_dist, dtype=np.float32)
    for i in range(query_num):
        temp_min = np.zeros(shape=[1, all_num], dtype=np.float32)
        indNonZero = np.where(V[i, :] != 0)[0]
        indImages = [invIndex[ind] for ind in indNonZero]
        for j in range(len(indNonZero)):
            temp_min[0, indImages[j]] = temp_min[0, indImages[j]] + np.minimum(
                V[i, indNonZero[j]], V[indImages[j], indNonZero[j]]
            )
        jaccard_dist[i] = 1 - temp_min / (2.0 - temp_min)
    return jaccard_dist * (1 - lambda_value) + original_dist * lambda_value


def re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    """Zhong et al.'s entry point: Euclidean distance matrices in, (Q, G) distances out."""
    original_dist = np.concatenate(
        [
            np.concatenate([q_q_dist, q_g_dist], axis=1),
            np.concatenate([q_g_dist.T, g_g_dist], axis=1),
        ],
        axis=0,
    )
    query_num = q_g_dist.shape[0]
    return _reference_all(original_dist, query_num, k1, k2, lambda_value)[:, query_num:]


def _euclid(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(np.maximum(0.0, 2.0 - 2.0 * (a @ b.T)))


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clustered(
    rng: np.random.Generator, n_classes: int, per_class: int, dim: int, noise: float
) -> tuple[np.ndarray, np.ndarray]:
    """Unit embeddings scattered around random class centres: (N, dim) float32, (N,) int."""
    centres = rng.standard_normal((n_classes, dim))
    labels = np.repeat(np.arange(n_classes), per_class)
    x = centres[labels] + noise * rng.standard_normal((labels.size, dim))
    return _unit(x), labels


# --- alpha-QE and DBA -------------------------------------------------------------------------


def test_alpha_query_expansion_by_hand() -> None:
    queries = np.array([[1.0, 0.0, 0.0]], dtype=np.float32)
    gallery = np.array([[0.8, 0.6, 0.0], [0.6, 0.0, 0.8], [-1.0, 0.0, 0.0]], dtype=np.float32)
    # Top-2 by cosine: rows 0 (0.8) and 1 (0.6); weights 0.8^3 = 0.512 and 0.6^3 = 0.216.
    summed = np.array([1.0 + 0.512 * 0.8 + 0.216 * 0.6, 0.512 * 0.6, 0.216 * 0.8])
    expanded = alpha_query_expansion(queries, gallery, k=2, alpha=3.0)
    assert expanded.dtype == np.float32 and expanded.shape == (1, 3)
    np.testing.assert_allclose(expanded[0], summed / np.linalg.norm(summed), atol=1e-6)
    # alpha = 0: plain average of the query and its k neighbours.
    plain = alpha_query_expansion(queries, gallery, k=1, alpha=0.0)[0]
    np.testing.assert_allclose(plain, _unit(np.array([[1.8, 0.6, 0.0]]))[0], atol=1e-6)


def test_database_augmentation_by_hand() -> None:
    gallery = np.array([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    augmented = database_augmentation(gallery, k=1, alpha=2.0)
    # Row 0's nearest other item is row 1 (0.8), row 1's is row 0, row 2's has cosine 0.
    expected = _unit(
        np.array(
            [
                [1.0 + 0.64 * 0.8, 0.64 * 0.6, 0.0],
                [0.8 + 0.64 * 1.0, 0.6, 0.0],
                [0.0, 0.0, 1.0],
            ]
        )
    )
    np.testing.assert_allclose(augmented, expected, atol=1e-6)


def test_negative_similarities_add_nothing() -> None:
    queries = np.array([[1.0, 0.0]], dtype=np.float32)
    gallery = np.array([[-0.6, 0.8], [-1.0, 0.0]], dtype=np.float32)
    expanded = alpha_query_expansion(queries, gallery, k=2, alpha=1.5)
    np.testing.assert_allclose(expanded, queries, atol=1e-7)


def test_k_zero_returns_the_unit_input() -> None:
    rng = np.random.default_rng(0)
    queries, gallery = rng.standard_normal((4, 8)), rng.standard_normal((6, 8))
    expanded = alpha_query_expansion(queries, gallery, k=0)
    np.testing.assert_allclose(expanded, _unit(queries), atol=1e-6)
    np.testing.assert_allclose(database_augmentation(gallery, k=0), _unit(gallery), atol=1e-6)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda q, g: alpha_query_expansion(q, g, k=7), r"0\.\.6"),
        (lambda q, g: database_augmentation(g, k=6), r"0\.\.5"),
        (lambda q, g: alpha_query_expansion(q, g, alpha=-1.0), "alpha"),
        (lambda q, g: alpha_query_expansion(q[:, :3], g), "width"),
        (lambda q, g: k_reciprocal_rerank(q, g, lambda_value=1.5), "lambda_value"),
        (lambda q, g: k_reciprocal_rerank(q, g, k1=0), "k1"),
        (lambda q, g: k_reciprocal_topk(q, g, top_k=0), "top_k"),
        (lambda q, g: k_reciprocal_rerank(q * np.nan, g), "NaN"),
        (lambda q, g: rerank_similarity_matrix(g, method="magic"), "none"),
        (lambda q, g: rerank_similarity_matrix(g, method="qe", k1=3), "k1"),
    ],
)
def test_bad_input_raises_input_error(call, match: str) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(InputError, match=match):
        call(rng.standard_normal((2, 4)), rng.standard_normal((6, 4)))


# --- k-reciprocal against the paper's code ------------------------------------------------------


@pytest.mark.parametrize(
    ("n_query", "n_gallery", "k1", "k2", "lambda_value"),
    [
        (6, 40, 20, 6, 0.3),
        (5, 30, 5, 3, 0.5),  # odd k1: round(2.5) = 2, as numpy rounds
        (4, 25, 7, 1, 0.0),  # k2 = 1: no local query expansion
        (3, 12, 20, 8, 1.0),  # k1 + 1 and k2 larger than some neighbour lists
    ],
)
def test_k_reciprocal_matches_the_paper_code(n_query, n_gallery, k1, k2, lambda_value) -> None:
    rng = np.random.default_rng(n_gallery)
    x, _ = _clustered(rng, n_classes=5, per_class=(n_query + n_gallery) // 5 + 1, dim=16, noise=1.0)
    x = x[rng.permutation(x.shape[0])[: n_query + n_gallery]]
    q, g = x[:n_query], x[n_query:]
    expected = re_ranking(_euclid(q, g), _euclid(q, q), _euclid(g, g), k1, k2, lambda_value)
    got = k_reciprocal_rerank(q, g, k1=k1, k2=k2, lambda_value=lambda_value, chunk=7)
    assert got.shape == (n_query, n_gallery) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)


def _all_methods(q: np.ndarray, g: np.ndarray, chunk: int) -> list[np.ndarray]:
    top = k_reciprocal_topk(q, g, top_k=20, k1=6, k2=3, chunk=chunk)
    return [
        k_reciprocal_rerank(q, g, k1=10, k2=4, chunk=chunk),
        top.distances,
        top.indices,
        alpha_query_expansion(q, g, k=3),
        database_augmentation(g, k=4),
        rerank_similarity_matrix(g, method="kr", k1=5, k2=2, chunk=chunk),
    ]


def test_results_do_not_depend_on_the_block_sizes(monkeypatch) -> None:
    rng = np.random.default_rng(3)
    q, g = _unit(rng.standard_normal((7, 12))), _unit(rng.standard_normal((50, 12)))
    big = _all_methods(q, g, chunk=1000)
    # One-row (or few-row) blocks everywhere, diagonal exclusion across gallery blocks included.
    monkeypatch.setattr(neighbours, "ELEMENT_BUDGET", 50)
    monkeypatch.setattr(rerank_module, "TRIPLET_BUDGET", 50)
    monkeypatch.setattr(neighbours, "QUERY_BLOCK_ROWS", 3)
    for small, expected in zip(_all_methods(q, g, chunk=1), big, strict=True):
        np.testing.assert_allclose(small, expected, atol=1e-6)


def test_similarity_matrix_kr_matches_the_paper_code_on_the_set_itself() -> None:
    rng = np.random.default_rng(5)
    x, _ = _clustered(rng, n_classes=4, per_class=8, dim=16, noise=0.8)
    expected = 1.0 - _reference_all(_euclid(x, x), x.shape[0], 6, 3, 0.3)
    got = rerank_similarity_matrix(x, method="kr", k1=6, k2=3, lambda_value=0.3)
    assert got.shape == (32, 32) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(np.diag(got), 1.0, atol=1e-5)


def test_similarity_matrix_none_and_dba_under_both_names() -> None:
    rng = np.random.default_rng(6)
    x = rng.standard_normal((9, 5))
    np.testing.assert_allclose(
        rerank_similarity_matrix(x, method="none"), _unit(x) @ _unit(x).T, atol=1e-6
    )
    augmented = database_augmentation(x, k=2, alpha=3.0)
    got = rerank_similarity_matrix(x, method="dba", k=2, alpha=3.0)
    np.testing.assert_allclose(got, augmented @ augmented.T, atol=1e-6)
    old_name = rerank_similarity_matrix(x, method="qe", k=2, alpha=3.0)  # still accepted
    np.testing.assert_array_equal(old_name, got)
    np.testing.assert_allclose(got, got.T, atol=1e-6)


# --- top-k path -------------------------------------------------------------------------------


def test_topk_with_the_whole_gallery_equals_the_dense_rerank_per_query() -> None:
    rng = np.random.default_rng(7)
    q, g = _unit(rng.standard_normal((3, 10))), _unit(rng.standard_normal((30, 10)))
    result = k_reciprocal_topk(q, g, top_k=100, k1=8, k2=3)  # clipped to G = 30
    assert isinstance(result, RerankResult)
    assert result.distances.shape == result.indices.shape == (3, 30)
    for i in range(3):
        dense = k_reciprocal_rerank(q[i : i + 1], g, k1=8, k2=3)[0]
        np.testing.assert_allclose(result.distances[i], np.sort(dense), atol=1e-6)
        np.testing.assert_allclose(dense[result.indices[i]], result.distances[i], atol=1e-6)


def test_topk_reranks_each_query_within_its_own_candidate_pool() -> None:
    rng = np.random.default_rng(8)
    x, _ = _clustered(rng, n_classes=6, per_class=15, dim=12, noise=0.9)
    q, g = x[:5], x[5:]
    result = k_reciprocal_topk(q, g, top_k=25, k1=6, k2=3, lambda_value=0.2)
    for i in range(5):
        pool = np.argsort(-(g @ q[i]), kind="stable")[:25]
        assert set(result.indices[i]) == set(pool)
        dense = k_reciprocal_rerank(q[i : i + 1], g[pool], k1=6, k2=3, lambda_value=0.2)[0]
        np.testing.assert_allclose(result.distances[i], np.sort(dense), atol=1e-6)


def _mean_ap(distances: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray) -> float:
    order = np.argsort(distances, axis=1, kind="stable")
    relevant = gallery_labels[order] == query_labels[:, None]
    return float(np.mean([average_precision(row) for row in relevant]))


def test_reranking_improves_map_on_clustered_data() -> None:
    rng = np.random.default_rng(11)
    x, labels = _clustered(rng, n_classes=12, per_class=12, dim=32, noise=1.4)
    is_query = np.zeros(labels.size, dtype=bool)
    is_query[::6] = True
    q, g, ql, gl = x[is_query], x[~is_query], labels[is_query], labels[~is_query]
    baseline = _mean_ap(_euclid(q, g), ql, gl)
    reranked = _mean_ap(k_reciprocal_rerank(q, g, k1=10, k2=4, lambda_value=0.3), ql, gl)
    g_dba = database_augmentation(g, k=3, alpha=3.0)
    expanded = _mean_ap(_euclid(alpha_query_expansion(q, g_dba, k=3), g_dba), ql, gl)
    assert reranked > baseline + 0.05  # measured: 0.605 -> 0.742
    assert expanded > baseline + 0.05  # measured: 0.605 -> 0.725


def test_topk_on_a_100k_gallery_completes() -> None:
    rng = np.random.default_rng(12)
    gallery = rng.standard_normal((100_000, 64), dtype=np.float32)
    queries = gallery[:50] + 0.1 * rng.standard_normal((50, 64), dtype=np.float32)
    result = k_reciprocal_topk(queries, gallery, top_k=100)
    assert result.distances.shape == result.indices.shape == (50, 100)
    assert result.distances.dtype == np.float32 and result.indices.dtype == np.int64
    assert np.all(np.diff(result.distances, axis=1) >= 0)
    assert np.isfinite(result.distances).all()
    assert (result.indices[:, 0] == np.arange(50)).all()  # each query's source stays first
