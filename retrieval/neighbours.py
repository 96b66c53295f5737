"""Exact nearest neighbours by cosine in numpy blocks, and the query expansion built on them.

Alpha-query expansion and database-side augmentation (DBA) average each vector with its
nearest neighbours; the k-reciprocal re-ranking in :mod:`retrieval.rerank` starts from the
same blocked top-k search. Blocks keep memory at ELEMENT_BUDGET elements whatever the gallery
size, so these run on galleries of 100k+ rows. All inputs are L2-normalised here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from retrieval.errors import InputError
from retrieval.metrics import unit_rows

ELEMENT_BUDGET = 1 << 20  # elements held at once by one vectorised step (8 MB as float64)
QUERY_BLOCK_ROWS = 256  # query rows that share one pass over the gallery in a top-k search


def unit_pair(query: np.ndarray, gallery: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sides as unit rows of one width, or an ``InputError`` that says which differs."""
    q, g = unit_rows(query, "queries"), unit_rows(gallery, "gallery")
    if q.shape[1] != g.shape[1]:
        raise InputError(
            f"query width D={q.shape[1]} != gallery width D={g.shape[1]}; "
            "embed both with the same model"
        )
    return q, g


def int_at_least(value: Any, name: str, low: int, high: int | None = None) -> int:
    """``value`` as an int in ``low..high``; bools and floats are refused, not truncated."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"in {low}..{high}"
        raise InputError(f"{name} must be {allowed}, got {value}")
    return int(value)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def top_k_cosine(
    a: np.ndarray, b: np.ndarray, k: int, *, exclude_self: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows of b for each row of a: scores (n, k) float32 descending, indices (n, k) int64.

    Blocks of QUERY_BLOCK_ROWS rows of a meet blocks of b, keeping a running top-k, so each
    gallery block is read once per query block. exclude_self: a is b, and row i never picks
    itself. The order of exactly tied scores is unspecified.
    """
    n, g = a.shape[0], b.shape[0]
    out_s = np.empty((n, k), dtype=np.float32)
    out_i = np.empty((n, k), dtype=np.int64)
    cols = max(k, ELEMENT_BUDGET // QUERY_BLOCK_ROWS)
    for r0 in range(0, n, QUERY_BLOCK_ROWS):
        r1 = min(r0 + QUERY_BLOCK_ROWS, n)
        best_s = np.empty((r1 - r0, 0), dtype=np.float32)
        best_i = np.empty((r1 - r0, 0), dtype=np.int64)
        for c0 in range(0, g, cols):
            c1 = min(c0 + cols, g)
            sims = a[r0:r1] @ b[c0:c1].T  # (rows, cols)
            if exclude_self:
                own = np.arange(max(r0, c0), min(r1, c1))
                sims[own - r0, own - c0] = -np.inf
            pool_s = np.concatenate([best_s, sims], axis=1)
            pool_i = np.concatenate([best_i, np.broadcast_to(np.arange(c0, c1), sims.shape)], 1)
            keep = np.argpartition(-pool_s, k - 1, axis=1)[:, :k]
            best_s = np.take_along_axis(pool_s, keep, axis=1)
            best_i = np.take_along_axis(pool_i, keep, axis=1)
        order = np.lexsort((best_i, -best_s), axis=-1)
        out_s[r0:r1] = np.take_along_axis(best_s, order, axis=1)
        out_i[r0:r1] = np.take_along_axis(best_i, order, axis=1)
    return out_s, out_i


def _expanded_rows(x: np.ndarray, g: np.ndarray, k: int, alpha: float, exclude: bool) -> np.ndarray:
    """Rows of x (n, D) plus sum_j max(cos_j, 0)^alpha * neighbour j in g: (n, D) float32 unit."""
    scores, idx = top_k_cosine(x, g, k, exclude_self=exclude)
    weights = np.maximum(scores, 0.0).astype(np.float64) ** alpha  # (n, k)
    out = np.empty_like(x)
    rows = max(1, ELEMENT_BUDGET // (k * g.shape[1]))
    for start in range(0, x.shape[0], rows):
        stop = start + rows
        summed = x[start:stop] + np.einsum("nk,nkd->nd", weights[start:stop], g[idx[start:stop]])
        out[start:stop] = summed / np.linalg.norm(summed, axis=1, keepdims=True)
    return out


def _check_qe(k: int, alpha: float, n_available: int, what: str) -> int:
    if not (is_number(alpha) and np.isfinite(alpha) and alpha >= 0):
        raise InputError(f"alpha must be a finite number >= 0, got {alpha!r}")
    return int_at_least(k, f"k (neighbours from {what})", 0, n_available)


def alpha_query_expansion(
    queries: np.ndarray, gallery: np.ndarray, *, k: int = 2, alpha: float = 3.0
) -> np.ndarray:
    """Alpha-QE (Radenovic et al.): each query plus its top-k gallery neighbours, weighted.

    Averaging a query with its nearest gallery items pulls it towards its class. The query keeps
    weight 1; neighbour j gets max(cos, 0)^alpha (negative similarities add nothing).
    queries: (Q, D), gallery: (G, D), normalised here; k in 0..G (0 returns the unit queries).
    Returns (Q, D) float32, L2-normalised.
    """
    q, g = unit_pair(queries, gallery)
    k = _check_qe(k, alpha, g.shape[0], "the gallery")
    return q if k == 0 else _expanded_rows(q, g, k, float(alpha), exclude=False)


def database_augmentation(gallery: np.ndarray, *, k: int = 2, alpha: float = 3.0) -> np.ndarray:
    """DBA: alpha-QE applied to the gallery against itself, so both sides are denoised alike.

    Each item keeps weight 1 and adds its k nearest *other* gallery items with weights
    max(cos, 0)^alpha. gallery: (G, D), normalised here; k in 0..G-1 (0 returns the unit rows).
    Returns (G, D) float32, L2-normalised.
    """
    g = unit_rows(gallery, "gallery")
    k = _check_qe(k, alpha, g.shape[0] - 1, "the rest of the gallery")
    return g if k == 0 else _expanded_rows(g, g, k, float(alpha), exclude=True)


def expand_against_gallery(
    queries: np.ndarray, gallery: np.ndarray, *, k: int = 2, alpha: float = 3.0
) -> tuple[np.ndarray, np.ndarray]:
    """DBA of the gallery, then alpha-QE of the queries against the augmented gallery.

    The query-against-gallery form of ``qe`` (Recall@1 and mAP of a search), where the pairs
    mode re-scores one set against itself: both sides are averaged with their neighbours alike,
    as in the Google Landmark solutions. Returns (queries, gallery), unit rows.
    """
    g = database_augmentation(gallery, k=k, alpha=alpha)
    return alpha_query_expansion(queries, g, k=k, alpha=alpha), g
