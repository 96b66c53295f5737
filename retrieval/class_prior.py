"""Closed-set pair scoring: blend each pair's similarity with how far the gallery agrees on
whom the two photos show.

Why: when every image of a pairs file shows an individual the gallery holds (Kaggle's re-ID
test sets are closed-set: the same animals as train.csv), the labelled gallery knows more than
the two embeddings. Two photos of one dog from different sides can be far apart and still both
sit next to that dog's gallery photos. Each image gets the class posterior of the gallery's
decision rule (``retrieval.serving.rules.class_posterior``, the one photo search decides on),
and a pair scores ``(1 - weight) * similarity + weight * (p_a . p_b)``. For photos of
individuals the gallery lacks, the posterior names a wrong individual with confidence, so this
stays opt-in (``search.py --pairs ... --closed_set``), and weight 0 ("off") is a candidate that
val keeps on a tie.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from retrieval.errors import InputError
from retrieval.neighbours import ELEMENT_BUDGET, is_number
from retrieval.rerank_tune import TunedRerank, set_identity_map

METHOD = "closed_set"  # the name its tuned parameters go by
DEFAULT_PARAMS = {"weight": 0.5}  # when val cannot choose (no individual twice in val, ONNX)
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # "off" first: on a tie (a small val split often scores
# 1.0 throughout) the prior stays off


def check_weight(weight: Any) -> float:
    if not (is_number(weight) and 0 <= weight <= 1):
        raise InputError(f"weight must be a number in [0, 1], got {weight!r}")
    return float(weight)


def agreement(posterior: np.ndarray, rows_a: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
    """p_a . p_b for every pair (rows_a[m], rows_b[m]) of a (N, C) posterior: (M,) float32."""
    out = np.empty(len(rows_a), dtype=np.float32)
    step = max(1, ELEMENT_BUDGET // max(1, posterior.shape[1]))
    for start in range(0, len(rows_a), step):
        a, b = rows_a[start : start + step], rows_b[start : start + step]
        out[start : start + step] = np.einsum("mc,mc->m", posterior[a], posterior[b])
    return out


def agreement_matrix(posterior: np.ndarray) -> np.ndarray:
    """p_i . p_j for every ordered pair of the N images: (N, N) float32."""
    return (posterior @ posterior.T).astype(np.float32)


def blend(similarity: np.ndarray, agreed: np.ndarray, weight: float) -> np.ndarray:
    """(1 - weight) * similarity + weight * agreement, elementwise (any matching shapes)."""
    weight = check_weight(weight)
    return ((1.0 - weight) * similarity + weight * agreed).astype(np.float32)


def merge_hits(
    scores: np.ndarray, labels: np.ndarray, more_scores: np.ndarray, more_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Two hit lists of the same queries as one, best first, as long as the longer input.

    scores/labels: (N, k) and (N, j), labels -1 where there is no hit. Returns (N, max(k, j)).
    """
    k = max(scores.shape[1], more_scores.shape[1])
    both_labels = np.concatenate([labels, more_labels], axis=1)
    both = np.where(both_labels >= 0, np.concatenate([scores, more_scores], axis=1), -np.inf)
    order = np.argsort(-both, axis=1, kind="stable")[:, :k]
    merged_labels = np.take_along_axis(both_labels, order, axis=1)
    merged = np.take_along_axis(both, order, axis=1)
    return np.where(merged_labels >= 0, merged, 0.0).astype(np.float32), merged_labels


def tune_prior(similarity: np.ndarray, posterior: np.ndarray, labels: np.ndarray) -> TunedRerank:
    """The weight in WEIGHTS with the best identity-balanced mAP on a val split scored
    against itself (ties: the earlier one, so "off" wins a tie).

    similarity: (N, N) of the val images (after any re-ranking); posterior: (N, C) their class
    posteriors from labelled photos other than themselves; labels: (N,) int classes.
    """
    plain = set_identity_map(similarity, labels)
    agreed = agreement_matrix(posterior)
    best = TunedRerank(METHOD, {"weight": 0.0}, plain, plain)
    for weight in WEIGHTS[1:]:
        val_map = set_identity_map(blend(similarity, agreed, weight), labels)
        if val_map > best.val_map + 1e-9:
            best = TunedRerank(METHOD, {"weight": weight}, val_map, plain)
    return best
