"""FlatIndex against numpy brute force (ties allowed), persistence, stable IDs and input checks."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from faiss.contrib.evaluation import check_ref_knn_with_draws

from retrieval.errors import InputError
from retrieval.serving import index as index_module
from retrieval.serving.index import FlatIndex, SearchResult, normalize, similarity_matrix

DIM = 16


def _unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _gallery_with_ties(rng: np.random.Generator, n: int = 120) -> np.ndarray:
    """Unit vectors where a third of the rows are exact copies of others (tied scores)."""
    x = _unit(rng, n)
    copies = rng.choice(n // 2, size=n // 3, replace=False)
    x[n // 2 : n // 2 + n // 3] = x[copies]
    return x


def _brute_force(queries: np.ndarray, gallery: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    scores = queries.astype(np.float64) @ gallery.astype(np.float64).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def _cpu_index(gallery: np.ndarray) -> FlatIndex:
    index = FlatIndex(gallery.shape[1], use_gpu=False)
    index.add(gallery)
    return index


@pytest.mark.parametrize("k", [1, 5, 17])
def test_search_matches_brute_force_allowing_ties(k: int) -> None:
    rng = np.random.default_rng(0)
    gallery = _gallery_with_ties(rng)
    queries = np.vstack([_unit(rng, 30), gallery[:10]])  # gallery rows: exact-match queries
    result = _cpu_index(gallery).search(queries, k)
    ref_scores, ref_ids = _brute_force(queries, gallery, k)
    check_ref_knn_with_draws(ref_scores, ref_ids, result.scores, result.indices, atol=1e-5)


def test_result_shapes_dtypes_and_distance_formula() -> None:
    rng = np.random.default_rng(1)
    result = _cpu_index(_unit(rng, 50)).search(_unit(rng, 7), 5)
    assert isinstance(result, SearchResult)
    for array, dtype in [
        (result.scores, np.float32),
        (result.distances, np.float32),
        (result.indices, np.int64),
    ]:
        assert array.shape == (7, 5)
        assert array.dtype == dtype
    assert (np.diff(result.scores, axis=1) <= 1e-6).all()
    assert (np.diff(result.distances, axis=1) >= -1e-6).all()
    expected = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * result.scores))
    np.testing.assert_allclose(result.distances, expected, rtol=1e-6)


def test_search_chunks_give_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    index = _cpu_index(_unit(rng, 40))
    queries = _unit(rng, 23)
    whole = index.search(queries, 4)
    monkeypatch.setattr(index_module, "QUERY_CHUNK_ROWS", 5)
    chunked = index.search(queries, 4)
    np.testing.assert_array_equal(whole.indices, chunked.indices)
    np.testing.assert_allclose(whole.scores, chunked.scores, atol=1e-6)


def test_unnormalised_input_is_normalised() -> None:
    rng = np.random.default_rng(3)
    gallery, queries = _unit(rng, 30), _unit(rng, 6)
    scales = rng.uniform(0.1, 50.0, size=(30, 1)).astype(np.float32)
    plain = _cpu_index(gallery).search(queries, 5)
    scaled = _cpu_index(gallery * scales).search(queries * 3.0, 5)
    np.testing.assert_array_equal(plain.indices, scaled.indices)
    np.testing.assert_allclose(plain.scores, scaled.scores, atol=1e-5)
    assert np.abs(scaled.scores).max() <= 1.0 + 1e-5


def test_normalize_returns_unit_float32_rows() -> None:
    x = np.array([[3.0, 4.0], [0.0, -2.0]])
    out = normalize(x)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, -1.0]], rtol=1e-6)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.array([[1.0, np.nan]]), "NaN or inf"),
        (np.array([[1.0, 0.0], [np.inf, 1.0]]), "row 1"),
        (np.array([[1.0, 1.0], [0.0, 0.0]]), "zero"),
        (np.ones(4), "2-D"),
    ],
)
def test_normalize_rejects_bad_rows(bad: np.ndarray, match: str) -> None:
    with pytest.raises(InputError, match=match):
        normalize(bad)


def test_k_larger_than_gallery_is_clipped() -> None:
    rng = np.random.default_rng(4)
    result = _cpu_index(_unit(rng, 6)).search(_unit(rng, 3), 50)
    assert result.indices.shape == (3, 6)
    assert all(sorted(row) == list(range(6)) for row in result.indices.tolist())


def test_empty_index_returns_empty_rows() -> None:
    result = FlatIndex(DIM, use_gpu=False).search(_unit(np.random.default_rng(5), 2), 5)
    assert result.indices.shape == (2, 0)
    assert result.scores.shape == (2, 0)


@pytest.mark.parametrize("k", [0, -3, 2.5, True])
def test_bad_k_rejected(k: object) -> None:
    index = _cpu_index(_unit(np.random.default_rng(6), 5))
    with pytest.raises(InputError, match="k must be"):
        index.search(_unit(np.random.default_rng(7), 1), k)  # type: ignore[arg-type]


def test_wrong_width_rejected() -> None:
    index = FlatIndex(DIM, use_gpu=False)
    with pytest.raises(InputError, match=r"shape \(N, 16\)"):
        index.add(np.ones((3, DIM + 1), dtype=np.float32))


def test_save_load_round_trip(tmp_path) -> None:
    rng = np.random.default_rng(8)
    gallery = _gallery_with_ties(rng, 60)
    index = FlatIndex(DIM, use_gpu=False)
    index.add_with_ids(gallery, np.arange(1000, 1060))
    index.remove_ids(np.array([1003, 1010]))
    path = tmp_path / "sub" / "gallery.faiss"
    index.save(path)
    index.save(path)  # overwriting an existing file works too
    assert sorted(p.name for p in path.parent.iterdir()) == ["gallery.faiss"]  # no temp left
    loaded = FlatIndex.load(path, use_gpu=False)
    assert loaded.ntotal == 58 and loaded.dim == DIM
    np.testing.assert_array_equal(loaded.ids(), index.ids())
    np.testing.assert_array_equal(loaded.reconstruct_all(), index.reconstruct_all())
    queries = _unit(rng, 9)
    before, after = index.search(queries, 7), loaded.search(queries, 7)
    np.testing.assert_array_equal(before.indices, after.indices)
    np.testing.assert_array_equal(before.scores, after.scores)
    assert loaded.add(_unit(rng, 2)).tolist() == [1060, 1061]


def test_load_rejects_missing_corrupt_and_foreign_files(tmp_path) -> None:
    with pytest.raises(InputError, match="not found"):
        FlatIndex.load(tmp_path / "nope.faiss")
    junk = tmp_path / "junk.faiss"
    junk.write_bytes(b"not an index at all")
    with pytest.raises(InputError, match="not a readable faiss index"):
        FlatIndex.load(junk, use_gpu=False)
    foreign = tmp_path / "l2.faiss"
    faiss.write_index(faiss.IndexFlatL2(DIM), str(foreign))
    with pytest.raises(InputError, match="IndexFlatIP"):
        FlatIndex.load(foreign, use_gpu=False)


def test_remove_ids_never_returned_and_storage_consistent() -> None:
    rng = np.random.default_rng(9)
    gallery = _unit(rng, 40)
    index = _cpu_index(gallery)
    removed = np.array([0, 5, 6, 39, 12345])
    assert index.remove_ids(removed) == 4
    assert index.ntotal == 36
    kept = np.setdiff1d(np.arange(40), removed)
    np.testing.assert_array_equal(np.sort(index.ids()), kept)
    np.testing.assert_allclose(index.reconstruct_all(), gallery[index.ids()], atol=1e-7)
    result = index.search(gallery, 36)  # every stored row, for every query
    assert not np.isin(result.indices, removed).any()
    np.testing.assert_array_equal(result.indices[kept, 0], kept)  # a kept row finds itself
    assert index.add(_unit(rng, 1)).tolist() == [39]  # documented: largest stored ID + 1


def test_add_with_ids_validates_ids() -> None:
    rng = np.random.default_rng(10)
    index = FlatIndex(DIM, use_gpu=False)
    index.add_with_ids(_unit(rng, 3), np.array([7, 3, 9]))
    assert index.ids().tolist() == [7, 3, 9]
    assert index.search(index.reconstruct_all()[1:2], 1).indices.tolist() == [[3]]
    with pytest.raises(InputError, match="unique"):
        index.add_with_ids(_unit(rng, 1), np.array([9]))
    with pytest.raises(InputError, match="unique"):
        index.add_with_ids(_unit(rng, 2), np.array([11, 11]))
    with pytest.raises(InputError, match=">= 0"):
        index.add_with_ids(_unit(rng, 1), np.array([-1]))
    with pytest.raises(InputError, match="integer array"):
        index.add_with_ids(_unit(rng, 2), np.array([1]))


def test_similarity_matrix_is_cosine() -> None:
    rng = np.random.default_rng(11)
    a, b = rng.standard_normal((5, DIM)), rng.standard_normal((3, DIM))
    expected = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (
        b / np.linalg.norm(b, axis=1, keepdims=True)
    ).T
    out = similarity_matrix(a, b)
    assert out.shape == (5, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-6)
    with pytest.raises(InputError, match="equal widths"):
        similarity_matrix(a, b[:, :4])


def test_bad_dim_rejected() -> None:
    with pytest.raises(InputError, match="positive integer"):
        FlatIndex(0)


@pytest.mark.skipif(index_module._gpu_available(), reason="this faiss build has a GPU")
def test_gpu_request_without_gpu_is_an_input_error() -> None:
    assert FlatIndex(DIM).use_gpu is False  # auto picks CPU here
    with pytest.raises(InputError, match="use_gpu=False"):
        FlatIndex(DIM, use_gpu=True)


def test_ten_thousand_by_64_smoke() -> None:
    rng = np.random.default_rng(12)
    gallery = _unit(rng, 10_000, 64)
    index = _cpu_index(gallery)
    rows = rng.choice(10_000, size=256, replace=False)
    result = index.search(gallery[rows], 10)
    np.testing.assert_array_equal(result.indices[:, 0], rows)
    np.testing.assert_allclose(result.scores[:, 0], 1.0, atol=1e-5)
    ref_scores, ref_ids = _brute_force(gallery[rows], gallery, 10)
    check_ref_knn_with_draws(ref_scores, ref_ids, result.scores, result.indices, atol=1e-5)
