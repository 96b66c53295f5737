"""Query-time re-ranking: k-reciprocal re-ranking (Zhong et al., CVPR 2017), and the re-ranked
similarity matrix of a set (cosine, after DBA, or k-reciprocal) that the pairs mode scores.
Alpha-query expansion and DBA live in :mod:`retrieval.neighbours`.

Why: re-ranking uses the neighbourhood structure of the gallery itself (a true match tends to
have the query among its own neighbours) and raises mAP with no training. The paper's reference
code holds dense (Q+G) x (Q+G) matrices (80 GB at G = 100k); here neighbour lists are found in
row blocks of a matrix product, and the k-reciprocal vectors V are sparse (CSR arrays), so
memory grows with (Q+G) * k1 * k2, not (Q+G)^2. For a large Q x G, :func:`k_reciprocal_topk`
re-ranks only each query's top candidates, which is what a search needs.

Why numpy and not the faiss index: the k-reciprocal distance is normalised by each row's
*farthest* distance as well as ranked by its nearest; one blocked matrix product gives both
(as :mod:`retrieval.metrics` ranks with numpy). All inputs are L2-normalised here, so squared
L2 distances are ``2 - 2 cos``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

from retrieval import neighbours as knn  # "neighbours" names arrays here
from retrieval.errors import InputError
from retrieval.metrics import unit_rows

DEFAULT_CHUNK_ROWS = 256
TRIPLET_BUDGET = 1 << 19  # (query, shared column, other item) triplets per Jaccard block
METHODS = {"none": (), "dba": ("k", "alpha"), "kr": ("k1", "k2", "lambda_value", "chunk")}
# "qe" was the pairs mode's name for DBA of the pair images (no query is expanded there);
# still accepted, as an alias
ALIASES = {"qe": "dba"}


def method_name(method: str) -> str:
    """The canonical name of a re-ranking method (an old alias resolved), or an InputError."""
    method = ALIASES.get(method, method)
    if method not in METHODS:
        raise InputError(f"re-ranking method {method!r} is unknown; choose one of {list(METHODS)}")
    return method


class RerankResult(NamedTuple):
    """Re-ranked gallery candidates per query, best first.

    distances: (Q, K) float32 k-reciprocal distances in [0, 1], ascending per row.
    indices: (Q, K) int64 gallery rows.
    """

    distances: np.ndarray
    indices: np.ndarray


class _Csr(NamedTuple):
    """Sparse rows: row r holds columns indices[indptr[r]:indptr[r+1]] with values data[...]."""

    indptr: np.ndarray  # (R+1,) int64
    indices: np.ndarray  # (nnz,) int32 (int64 past 2^31 rows)
    data: np.ndarray  # (nnz,) float32, as the paper's V


def _check_kr(k1: int, k2: int, lambda_value: float, chunk: int) -> tuple[int, int, float, int]:
    if not (knn.is_number(lambda_value) and 0.0 <= lambda_value <= 1.0):
        raise InputError(f"lambda_value must be a number in [0, 1], got {lambda_value!r}")
    k1, k2 = knn.int_at_least(k1, "k1", 1), knn.int_at_least(k2, "k2", 1)
    return k1, k2, float(lambda_value), knn.int_at_least(chunk, "chunk", 1)


def _neighbours_and_row_max(x: np.ndarray, width: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest `width` items of each row of x (N, D) (self included), in one (chunk, N) block at
    a time: neighbours (N, width) int64 by ascending distance, row_max (N,) largest squared L2."""
    n = x.shape[0]
    neighbours = np.empty((n, width), dtype=np.int64)
    row_max = np.empty(n, dtype=np.float64)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        d2 = np.maximum(0.0, 2.0 - 2.0 * (x[start:stop] @ x.T))  # (c, N) float32
        row_max[start:stop] = d2.max(axis=1)
        part = np.argpartition(d2, width - 1, axis=1)[:, :width]
        vals = np.take_along_axis(d2, part, axis=1)
        order = np.lexsort((part, vals), axis=-1)
        neighbours[start:stop] = np.take_along_axis(part, order, axis=1)
    return neighbours, np.where(row_max > 0, row_max, 1.0)


def _reciprocal_mask(forward: np.ndarray) -> np.ndarray:
    """(N, k) bool: forward[i, p] also has i among its own first k neighbours."""
    n, k = forward.shape
    mask = np.empty((n, k), dtype=bool)
    rows = max(1, knn.ELEMENT_BUDGET // (k * k))
    for start in range(0, n, rows):
        ids = np.arange(start, min(start + rows, n))
        mask[ids] = (forward[forward[ids]] == ids[:, None, None]).any(axis=2)
    return mask


def _gather_rows(m: _Csr, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Entries of the given rows (repeats allowed): owner (position in rows), columns, values."""
    starts = m.indptr[rows]
    lengths = m.indptr[rows + 1] - starts
    owner = np.repeat(np.arange(rows.size), lengths)
    shift = np.repeat(np.cumsum(lengths) - lengths - starts, lengths)
    pos = np.arange(owner.size) - shift
    return owner, m.indices[pos], m.data[pos]


def _sum_by_cell(
    rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n_cols: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Add up values landing in the same (row, col); returns rows, cols, sums sorted by cell."""
    cells, inverse = np.unique(rows * n_cols + cols, return_inverse=True)
    return cells // n_cols, cells % n_cols, np.bincount(inverse, weights=vals)


def _to_csr(n_rows: int, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> _Csr:
    """CSR from entries already sorted by row."""
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n_rows))])
    small = np.int32 if n_rows < np.iinfo(np.int32).max else np.int64  # halves the memory
    return _Csr(indptr.astype(np.int64), cols.astype(small), vals.astype(np.float32))


def _pair_cosines(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x[a[m]] . x[b[m]] for every m, gathering at most ELEMENT_BUDGET values at once: (M,)."""
    out = np.empty(a.size, dtype=np.float32)
    step = max(1, knn.ELEMENT_BUDGET // (2 * x.shape[1]))
    for start in range(0, a.size, step):
        stop = start + step
        out[start:stop] = np.einsum("ij,ij->i", x[a[start:stop]], x[b[start:stop]])
    return out


def _encoding(x: np.ndarray, neighbours: np.ndarray, row_max: np.ndarray, k1: int) -> _Csr:
    """The paper's V: weights exp(-d) over each row's expanded k-reciprocal set, summing to 1."""
    n = x.shape[0]
    forward = neighbours[:, : min(k1 + 1, n)]
    half = neighbours[:, : min(int(np.around(k1 / 2.0)) + 1, n)]
    recip, recip_half = _reciprocal_mask(forward), _reciprocal_mask(half)
    kf, kh = forward.shape[1], half.shape[1]
    block = max(1, knn.ELEMENT_BUDGET // (kf * kf * kh))
    parts = []
    for start in range(0, n, block):
        ids = np.arange(start, min(start + block, n))
        cand, ok = forward[ids], recip[ids]  # R(i): cand where ok
        h, h_ok = half[cand], recip_half[cand]  # R(c, k1/2) per candidate: (c, kf, kh)
        members = np.where(ok, cand, -1)
        shared = ((h[..., None] == members[:, None, None, :]).any(axis=3) & h_ok).sum(axis=2)
        accept = ok & (shared > 2.0 / 3 * h_ok.sum(axis=2))
        extra = np.where(accept[..., None] & h_ok, h, n).reshape(ids.size, -1)
        expanded = np.sort(np.concatenate([np.where(ok, cand, n), extra], axis=1), axis=1)
        keep = expanded < n
        keep[:, 1:] &= expanded[:, 1:] != expanded[:, :-1]
        local, pos = np.nonzero(keep)
        owner, cols = ids[local], expanded[local, pos]
        sims = _pair_cosines(x, owner, cols)
        weight = np.exp(-np.maximum(0.0, 2.0 - 2.0 * sims.astype(np.float64)) / row_max[owner])
        parts.append((owner, cols, weight / np.bincount(local, weights=weight)[local]))
    return _to_csr(n, *(np.concatenate(p) for p in zip(*parts, strict=True)))


def _local_expansion(v: _Csr, neighbours: np.ndarray, k2: int) -> _Csr:
    """Local query expansion: each V row becomes the mean of its k2 nearest items' V rows."""
    n = neighbours.shape[0]
    width = min(k2, n)
    if k2 == 1:
        return v
    block = max(1, int(knn.ELEMENT_BUDGET // max(1.0, width * v.indices.size / n)))
    parts = []
    for start in range(0, n, block):
        ids = np.arange(start, min(start + block, n))
        owner, cols, vals = _gather_rows(v, neighbours[ids, :width].ravel())
        parts.append(_sum_by_cell(ids[owner // width], cols, vals / width, n))
    return _to_csr(n, *(np.concatenate(p) for p in zip(*parts, strict=True)))


def _shared_mass(v: _Csr, rows: np.ndarray) -> Iterator[tuple[np.ndarray, ...]]:
    """Jaccard numerators sum_k min(V[i, k], V[j, k]) of the given rows i and every j sharing
    a column with i, found through the inverted index (V's transpose). Yields (positions in
    rows, j, mass) per block of at most about TRIPLET_BUDGET (i, k, j) triplets."""
    n = v.indptr.size - 1
    owners = np.repeat(np.arange(n, dtype=v.indices.dtype), np.diff(v.indptr))
    order = np.argsort(v.indices, kind="stable")
    by_col = _to_csr(n, v.indices[order], owners[order], v.data[order])
    col_len = np.diff(by_col.indptr)
    cost = np.concatenate([[0], np.cumsum(col_len[v.indices])])
    row_cost = cost[v.indptr[rows + 1]] - cost[v.indptr[rows]]
    bounds = np.cumsum(row_cost)
    start = 0
    while start < rows.size:
        limit = (bounds[start - 1] if start else 0) + TRIPLET_BUDGET
        stop = max(start + 1, int(np.searchsorted(bounds, limit, side="right")))
        owner, cols, vals = _gather_rows(v, rows[start:stop])
        via, other, other_vals = _gather_rows(by_col, cols)
        mass = np.minimum(vals[via], other_vals)
        pos, j, total = _sum_by_cell(owner[via], other, mass, n)
        yield pos + start, j, total
        start = stop


def _k_reciprocal_block(
    x: np.ndarray, n_query: int, col_start: int, k1: int, k2: int, lam: float, chunk: int
) -> np.ndarray:
    """Distances of rows :n_query of x (N, D) to its rows col_start: (n_query, N - col_start)."""
    n = x.shape[0]
    neighbours, row_max = _neighbours_and_row_max(x, min(max(k1 + 1, k2), n), chunk)
    v = _local_expansion(_encoding(x, neighbours, row_max, k1), neighbours, k2)
    dist = np.empty((n_query, n - col_start), dtype=np.float32)
    for start in range(0, n_query, chunk):
        stop = min(start + chunk, n_query)
        d2 = np.maximum(0.0, 2.0 - 2.0 * (x[start:stop] @ x[col_start:].T))
        dist[start:stop] = lam * d2 / row_max[start:stop, None] + (1.0 - lam)
    for pos, cols, mass in _shared_mass(v, np.arange(n_query)):
        keep = cols >= col_start  # Jaccard distance 1 (nothing shared) -> 1 - m / (2 - m)
        dist[pos[keep], cols[keep] - col_start] -= (1.0 - lam) * mass[keep] / (2.0 - mass[keep])
    return dist


def k_reciprocal_rerank(
    query: np.ndarray,
    gallery: np.ndarray,
    *,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    chunk: int = DEFAULT_CHUNK_ROWS,
) -> np.ndarray:
    """k-reciprocal re-ranking (Zhong et al. 2017) of every query against the whole gallery.

    Same result as the paper's ``re_ranking(q_g_dist, q_q_dist, g_g_dist, k1, k2, lambda)`` on
    Euclidean distances: lambda * d^2 / (row max) + (1 - lambda) * Jaccard distance of the
    k-reciprocal encodings, with local query expansion over k2 neighbours. Queries are part of
    the neighbourhood graph, as in the paper. query: (Q, D), gallery: (G, D), normalised here.
    Returns (Q, G) float32 distances in [0, 1], lower = more similar.

    Memory, with N = Q + G: one (chunk, N) float32 block, neighbour lists O(N * max(k1+1, k2)),
    sparse encodings O(N * k1 * k2) entries, blocks of ELEMENT_BUDGET, plus the (Q, G) result;
    never an (N, N) matrix. Time is O(N^2 D) for the neighbour lists: for a large gallery use
    :func:`k_reciprocal_topk`.
    """
    q, g = knn.unit_pair(query, gallery)
    k1, k2, lam, chunk = _check_kr(k1, k2, lambda_value, chunk)
    x = np.concatenate([q, g])
    return _k_reciprocal_block(x, q.shape[0], q.shape[0], k1, k2, lam, chunk)


def _rerank_pools(q: np.ndarray, pool: np.ndarray, k1: int, k2: int, lam: float) -> np.ndarray:
    """k-reciprocal distances of each query to its own pool: q (B, D), pool (B, P, D) -> (B, P)."""
    b, p, d = pool.shape
    items = np.concatenate([q[:, None, :], pool], axis=1)  # (B, P+1, D), query first
    d2 = np.maximum(0.0, 2.0 - 2.0 * (items @ items.transpose(0, 2, 1)))  # (B, P+1, P+1)
    row_max = d2.max(axis=2)
    row_max = np.where(row_max > 0, row_max, 1.0).astype(np.float64)
    width = min(max(k1 + 1, k2), p + 1)
    offsets = np.arange(b)[:, None, None] * (p + 1)
    local = np.argsort(d2, axis=2, kind="stable")[:, :, :width]
    neighbours = (local + offsets).reshape(-1, width)  # pools never mix: global ids per pool
    flat = items.reshape(-1, d)
    v = _local_expansion(_encoding(flat, neighbours, row_max.ravel(), k1), neighbours, k2)
    dist = (lam * d2[:, 0, 1:] / row_max[:, :1] + (1.0 - lam)).astype(np.float32)
    query_rows = np.arange(b) * (p + 1)
    for pos, cols, mass in _shared_mass(v, query_rows):
        in_pool = cols - query_rows[pos] - 1
        keep = in_pool >= 0  # drops the query itself
        dist[pos[keep], in_pool[keep]] -= (1.0 - lam) * mass[keep] / (2.0 - mass[keep])
    return dist


def k_reciprocal_topk(
    query: np.ndarray,
    gallery: np.ndarray,
    *,
    top_k: int = 100,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    chunk: int = DEFAULT_CHUNK_ROWS,
) -> RerankResult:
    """Re-rank each query's top_k cosine candidates with k-reciprocal distances (the search path).

    Each query is re-ranked on its own pool {query} + its top_k gallery neighbours: exactly
    ``k_reciprocal_rerank(query[i:i+1], gallery[candidates_i])``. So a query's result does not
    depend on the other queries, and cost is O(Q * G * D) for the candidates plus
    O(Q * top_k^2 * D) for the pools, fine for a gallery of millions. Neighbours outside the pool
    are not seen, so with top_k < G this approximates :func:`k_reciprocal_rerank`.
    query: (Q, D), gallery: (G, D), normalised here; top_k is clipped to G.
    Memory: score blocks of ELEMENT_BUDGET, pools of B <= chunk queries with
    B * (top_k+1) * max(top_k+1, D) <= ELEMENT_BUDGET, and the (Q, top_k) result.
    """
    q, g = knn.unit_pair(query, gallery)
    top = min(knn.int_at_least(top_k, "top_k", 1), g.shape[0])
    k1, k2, lam, chunk = _check_kr(k1, k2, lambda_value, chunk)
    distances = np.empty((q.shape[0], top), dtype=np.float32)
    indices = np.empty((q.shape[0], top), dtype=np.int64)
    _, candidates = knn.top_k_cosine(q, g, top)  # (Q, top)
    batch = max(1, min(chunk, knn.ELEMENT_BUDGET // ((top + 1) * max(top + 1, g.shape[1]))))
    for start in range(0, q.shape[0], batch):
        stop = min(start + batch, q.shape[0])
        dist = _rerank_pools(q[start:stop], g[candidates[start:stop]], k1, k2, lam)
        order = np.argsort(dist, axis=1, kind="stable")
        distances[start:stop] = np.take_along_axis(dist, order, axis=1)
        indices[start:stop] = np.take_along_axis(candidates[start:stop], order, axis=1)
    return RerankResult(distances=distances, indices=indices)


def rerank_similarity_matrix(embeddings: np.ndarray, *, method: str, **params: Any) -> np.ndarray:
    """Similarity of every image with every other after re-ranking (Kaggle pairs scoring).

    method "none": cosine; "dba" (alias "qe"): cosine after DBA of the set (params k, alpha); "kr":
    1 - k-reciprocal distance over the set itself (params k1, k2, lambda_value, chunk), where
    row i is the query, so the matrix need not be symmetric. embeddings: (N, D), normalised
    here. Returns (N, N) float32, higher = more similar, (about) 1 on the diagonal.
    """
    method = method_name(method)
    unknown = sorted(set(params) - set(METHODS[method]))
    if unknown:
        raise InputError(
            f"re-ranking method {method!r} takes no parameter {unknown[0]!r}; "
            f"allowed: {list(METHODS[method]) or 'none'}"
        )
    x = unit_rows(embeddings, "embeddings")
    if method == "dba":
        x = knn.database_augmentation(x, **params)
    if method in ("none", "dba"):
        similarity = np.clip(x @ x.T, -1.0, 1.0)
        np.fill_diagonal(similarity, 1.0)
        return similarity
    p = {"k1": 20, "k2": 6, "lambda_value": 0.3, "chunk": DEFAULT_CHUNK_ROWS, **params}
    k1, k2, lam, chunk = _check_kr(p["k1"], p["k2"], p["lambda_value"], p["chunk"])
    return 1.0 - _k_reciprocal_block(x, x.shape[0], 0, k1, k2, lam, chunk)
