"""Per-class summaries of a gallery: photo counts and normalised mean embeddings.

Apart from :mod:`retrieval.serving.evidence` because the gallery caches its class means and
the evidence reads them: both import this leaf, so neither imports the other.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse


def class_sizes(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(C,) int64 photos per class; labels (G,) int, -1 ignored."""
    labels = np.asarray(labels, dtype=np.int64)
    return np.bincount(labels[labels >= 0], minlength=n_classes).astype(np.int64)


def class_means(vectors: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, D) float32 unit mean embedding of each class; a class without photos gets zeros.

    vectors: (G, D) float32 unit rows; labels: (G,) int64 (-1 ignored).
    """
    labels = np.asarray(labels, dtype=np.int64)
    rows = np.flatnonzero(labels >= 0)
    # a sparse (C, G) membership matrix: one pass, no (G, D) float64 copy of a large gallery
    members = sparse.csr_matrix(
        (np.ones(rows.size, dtype=np.float32), (labels[rows], rows)),
        shape=(n_classes, vectors.shape[0]),
    )
    sums = np.asarray(members @ vectors, dtype=np.float32)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return np.divide(sums, norms, out=np.zeros_like(sums), where=norms > 0)


def mean_scores(queries: np.ndarray, means: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """(Q, C) float32 cosine to each class mean, -inf for classes without photos."""
    scores = queries @ means.T
    return np.where(sizes[None, :] > 0, scores, -np.inf).astype(np.float32)
