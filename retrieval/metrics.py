"""Retrieval metrics we own and test by hand: Recall@K, AP/mAP, identity-balanced mAP, confusion.

Why not a library: the re-ID definitions matter (a hit is *any* gallery image of the query's
class; identity-balanced mAP macro-averages per class as Kaggle re-ID competitions do) and
must be exact on a ranking of the full gallery. Ranking is by cosine similarity with numpy
matrix products in chunks, so this module needs no faiss. Ties in score keep gallery order
(stable sort), which makes every number deterministic.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from retrieval.errors import InputError

SCORE_CHUNK_ELEMENTS = 1 << 22  # query x gallery scores held at once (~16 MB float32)


@dataclass(frozen=True)
class RetrievalMetrics:
    """Scores of one query set against one gallery.

    per_class_ap maps each query class label to the mean AP of its queries. n_queries counts
    the scored queries; n_unscorable the ones left out (no gallery item of their class).
    """

    recall_at_1: float
    recall_at_5: float
    map: float
    identity_balanced_map: float
    per_class_ap: dict[int, float]
    n_queries: int
    n_unscorable: int = 0


def _int_labels(labels: np.ndarray, name: str, n: int | None = None) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise InputError(
            f"{name} must be a 1-D integer array, got {labels.dtype} {labels.shape}; "
            "map class names to indices with class_to_idx first"
        )
    if n is not None and labels.shape[0] != n:
        raise InputError(f"{name} has {labels.shape[0]} entries but {n} were expected (one a row)")
    return labels.astype(np.int64)


def unit_rows(x: np.ndarray, name: str, *, allow_empty: bool = False) -> np.ndarray:
    """(N, D) -> (N, D) C-contiguous float32 unit rows, so inner products are cosines: the one
    normalisation of the package. Rows with NaN/inf or no direction (zero norm) are refused,
    naming the row; so is an empty array unless ``allow_empty`` (an empty gallery). Rows that
    are unit already (a model's output) come back without a copy, which matters for a large
    gallery.
    """
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] == 0 or (x.shape[0] == 0 and not allow_empty):
        raise InputError(
            f"{name} must be a non-empty 2-D (N, D) array, got shape {x.shape}; reshape first"
        )
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.shape[0] == 0:
        return x
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise InputError(
            f"{name} row {bad} contains NaN or inf; only finite values are allowed, check the "
            "model output (e.g. fp16 overflow)"
        )
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    bad_rows = np.flatnonzero(~(np.isfinite(norms[:, 0]) & (norms[:, 0] > 1e-12)))
    if bad_rows.size:
        raise InputError(
            f"{name} row {int(bad_rows[0])} has zero (or overflowing) norm and no direction; "
            "drop it or fix the model output"
        )
    if np.abs(norms - 1.0).max() <= 1e-6:
        return x
    return np.ascontiguousarray(x / norms, dtype=np.float32)


def recall_at_k(query_labels: np.ndarray, ranked_gallery_labels: np.ndarray, k: int) -> float:
    """Share of queries whose top k hold at least one gallery item of their class.

    query_labels: (Q,) int; ranked_gallery_labels: (Q, K) int, best first, K >= k (-1 = padding).
    """
    query_labels = _int_labels(query_labels, "query_labels")
    ranked = np.asarray(ranked_gallery_labels)
    if ranked.ndim != 2 or ranked.shape[0] != query_labels.shape[0]:
        raise InputError(
            f"ranked_gallery_labels must be (Q={query_labels.shape[0]}, K), got {ranked.shape}"
        )
    if not 1 <= k <= ranked.shape[1]:
        raise InputError(f"k must be in 1..{ranked.shape[1]} (ranked columns), got {k}")
    if query_labels.size == 0:
        return 0.0
    hits = (ranked[:, :k] == query_labels[:, None]).any(axis=1)
    return float(hits.mean())


def average_precision_rows(relevant: np.ndarray) -> np.ndarray:
    """AP of each row of a (Q, n) bool ranking; 0 for rows with no relevant item. (Q,) float64."""
    relevant = relevant.astype(np.float64)
    hits_so_far = np.cumsum(relevant, axis=1)
    precision = hits_so_far / np.arange(1, relevant.shape[1] + 1)
    n_relevant = relevant.sum(axis=1)
    return (precision * relevant).sum(axis=1) / np.maximum(n_relevant, 1.0)


def average_precision(relevant: np.ndarray) -> float:
    """Standard AP over a full ranking: mean of precision@i at each relevant position i.

    relevant: (n,) bool, best first. Returns 0.0 when nothing is relevant (the query's class is
    absent from the gallery), so such queries pull the mean down rather than vanish.
    """
    relevant = np.asarray(relevant)
    if relevant.ndim != 1:
        raise InputError(f"relevant must be a 1-D bool ranking, got shape {relevant.shape}")
    if relevant.size == 0:
        return 0.0
    return float(average_precision_rows(relevant.astype(bool)[None, :])[0])


def identity_balanced_map(
    ap: np.ndarray, labels: np.ndarray, scorable: np.ndarray
) -> tuple[float, dict[int, float]]:
    """The one rule for every identity-balanced figure: queries with no other photo of their
    individual to rank (``scorable`` False) are left out, as in Kaggle re-ID scoring and
    PyTorch Metric Learning's AccuracyCalculator; the rest are averaged per identity, then
    over identities. ap, labels, scorable: (Q,). Returns (mAP, per-identity mean AP)."""
    ap, labels = np.asarray(ap)[scorable], np.asarray(labels)[scorable]
    if ap.size == 0:
        raise InputError("no query has another photo of its individual to rank: nothing to score")
    per_class = {int(c): float(ap[labels == c].mean()) for c in np.unique(labels)}
    return float(np.mean(list(per_class.values()))), per_class


def _rank_chunks(
    queries: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    query_labels: np.ndarray,
    exclude_self: bool,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield (start, ranked gallery labels (c, G'), relevant (c, G')) per chunk of queries."""
    rows = max(1, SCORE_CHUNK_ELEMENTS // gallery.shape[0])
    for start in range(0, queries.shape[0], rows):
        stop = min(start + rows, queries.shape[0])
        scores = queries[start:stop] @ gallery.T  # (c, G) cosine
        if exclude_self:
            scores[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")
        if exclude_self:
            order = order[:, :-1]  # the query itself, ranked last by its -inf score
        ranked = gallery_labels[order]
        yield start, ranked, ranked == query_labels[start:stop, None]


def evaluate_retrieval(
    query_embeddings: np.ndarray,
    query_labels: np.ndarray,
    gallery_embeddings: np.ndarray,
    gallery_labels: np.ndarray,
    *,
    exclude_self: bool = False,
) -> RetrievalMetrics:
    """Rank the whole gallery by cosine for every query and score the ranking.

    query_embeddings: (Q, D), gallery_embeddings: (G, D) (normalised here); labels (Q,), (G,)
    int. exclude_self: the query set *is* the gallery (pass the same arrays); row i is then left
    out of query i's ranking. Queries whose class has no gallery item are left out of every
    figure (``identity_balanced_map``'s rule) and counted. Recall@5 uses the whole ranking when
    it has fewer than 5 items.
    """
    queries = unit_rows(query_embeddings, "query_embeddings")
    gallery = unit_rows(gallery_embeddings, "gallery_embeddings")
    q_labels = _int_labels(query_labels, "query_labels", queries.shape[0])
    g_labels = _int_labels(gallery_labels, "gallery_labels", gallery.shape[0])
    if queries.shape[1] != gallery.shape[1]:
        raise InputError(
            f"query width D={queries.shape[1]} != gallery width D={gallery.shape[1]}; "
            "embed both with the same model"
        )
    if exclude_self and queries.shape[0] != gallery.shape[0]:
        raise InputError(
            "exclude_self=True needs the query set to be the gallery (same rows), got "
            f"{queries.shape[0]} queries and {gallery.shape[0]} gallery rows"
        )
    n_ranked = gallery.shape[0] - int(exclude_self)
    if n_ranked < 1:
        raise InputError("the gallery needs at least one item besides the query itself")
    ap = np.empty(queries.shape[0], dtype=np.float64)
    scorable = np.empty(queries.shape[0], dtype=bool)
    top5 = np.empty((queries.shape[0], min(5, n_ranked)), dtype=np.int64)
    for start, ranked, relevant in _rank_chunks(queries, gallery, g_labels, q_labels, exclude_self):
        ap[start : start + len(ranked)] = average_precision_rows(relevant)
        scorable[start : start + len(ranked)] = relevant.any(axis=1)
        top5[start : start + len(ranked)] = ranked[:, : top5.shape[1]]
    balanced, per_class_ap = identity_balanced_map(ap, q_labels, scorable)
    q_labels, top5 = q_labels[scorable], top5[scorable]
    return RetrievalMetrics(
        recall_at_1=recall_at_k(q_labels, top5, 1),
        recall_at_5=recall_at_k(q_labels, top5, top5.shape[1]),
        map=float(ap[scorable].mean()),
        identity_balanced_map=balanced,
        per_class_ap=per_class_ap,
        n_queries=int(scorable.sum()),
        n_unscorable=int((~scorable).sum()),
    )


def confusion_matrix(
    true_labels: np.ndarray, predicted_labels: np.ndarray, n_classes: int
) -> np.ndarray:
    """Counts of (true, predicted) class pairs: (C, C) int64, rows = true, columns = predicted.

    Predictions of -1 (rejected, "reshoot recommended") are left out of the matrix.
    """
    true = _int_labels(true_labels, "true_labels")
    pred = _int_labels(predicted_labels, "predicted_labels", true.shape[0])
    if n_classes < 1:
        raise InputError(f"n_classes must be >= 1, got {n_classes}")
    if true.size and (true.min() < 0 or true.max() >= n_classes):
        raise InputError(f"true_labels must lie in 0..{n_classes - 1}; check class_to_idx")
    if pred.size and (pred.min() < -1 or pred.max() >= n_classes):
        raise InputError(f"predicted_labels must lie in -1..{n_classes - 1} (-1 = rejected)")
    kept = pred >= 0
    flat = true[kept] * n_classes + pred[kept]
    counts = np.bincount(flat, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes).astype(np.int64)


def confusion_pairs(
    true_labels: np.ndarray,
    predicted_labels: np.ndarray,
    class_names: list[str],
    top_n: int = 10,
) -> list[tuple[str, str, int]]:
    """The most frequent mistakes as (true class, predicted class, count), most frequent first.

    Pairs are directed (A taken for B is not B taken for A); ties keep class-index order.
    Rejected predictions (-1) are not mistakes here.
    """
    matrix = confusion_matrix(true_labels, predicted_labels, len(class_names))
    np.fill_diagonal(matrix, 0)
    flat = matrix.ravel()
    order = np.argsort(-flat, kind="stable")[: max(int(top_n), 0)]
    n = len(class_names)
    return [(class_names[i // n], class_names[i % n], int(flat[i])) for i in order if flat[i] > 0]
