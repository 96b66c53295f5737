"""Closed-set pair scoring: blend each pair's similarity with how far the gallery agrees on
whom the two photos show.

Why: when every image of a pairs file shows an individual the gallery holds (Kaggle's re-ID
test sets are closed-set: the same animals as train.csv), the labelled gallery knows more than
the two embeddings. Two photos of one dog from different sides can be far apart and still both
sit next to that dog's gallery photos. Each image gets a class posterior from its top-k
gallery hits (a softmax kernel ``exp(temperature * (score - top1 score))`` summed per class),
and a pair scores ``(1 - weight) * similarity + weight * (p_a . p_b)``. For photos of
individuals the gallery lacks, the posterior names a wrong individual with confidence, so this
stays opt-in (``search.py --pairs ... --closed_set``).

Posteriors are sparse (at most k classes per image), and pairs are scored in blocks of
ELEMENT_BUDGET elements, so memory grows with the number of pairs times k^2, never with the
number of classes.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from retrieval.decision import VOTE_TOP_N
from retrieval.errors import InputError
from retrieval.neighbours import ELEMENT_BUDGET, is_number
from retrieval.rerank_tune import TunedRerank, set_identity_map

METHOD = "closed_set"  # the name its tuned parameters go by
TOP_K = VOTE_TOP_N  # gallery hits that make up each posterior, as many as vote (SPEC 5.3)
TEMPERATURE = 30.0  # as sharp as an ArcFace softmax at s=30; measured at that value only
DEFAULT_PARAMS = {"temperature": TEMPERATURE, "weight": 0.5}
WEIGHTS = (0.5, 0.25, 0.75, 1.0)  # the default first: on a tie (a small val split often
# scores 1.0 throughout) it is kept. The temperature is not tuned: on 55 val photos a grid
# over it picked noise and lost test mAP on 2 of 6 models (bench/RESULTS.md).


class ClassPosterior(NamedTuple):
    """Sparse class posteriors, one row per image.

    labels: (N, k) int64 gallery class per slot, -1 for a slot that holds no class.
    weights: (N, k) float32; a class's mass sits at its first slot, 0 at its repeats; each
    row sums to 1 (0 for an image with no gallery hit).
    """

    labels: np.ndarray
    weights: np.ndarray


def check_params(temperature: Any, weight: Any) -> tuple[float, float]:
    if not (is_number(temperature) and 0 < temperature < 1e4):
        raise InputError(f"temperature must be a number in (0, 1e4), got {temperature!r}")
    if not (is_number(weight) and 0 <= weight <= 1):
        raise InputError(f"weight must be a number in [0, 1], got {weight!r}")
    return float(temperature), float(weight)


def class_posterior(scores: np.ndarray, labels: np.ndarray, temperature: float) -> ClassPosterior:
    """Posterior over classes from each image's top-k gallery hits.

    scores: (N, k) cosine similarities, descending per row; labels: (N, k) int class of each
    hit, -1 where there is none (as ``Gallery.search`` returns them).
    """
    temperature, _ = check_params(temperature, 0.0)
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise InputError(f"scores {scores.shape} and labels {labels.shape} must be one (N, k)")
    valid = labels >= 0
    top = np.where(valid, scores, -np.inf).max(axis=1, keepdims=True)
    shifted = np.where(valid, scores - np.where(np.isfinite(top), top, 0.0), 0.0)
    kernel = np.where(valid, np.exp(temperature * shifted), 0.0)  # 1 at the best hit
    same = labels[:, :, None] == labels[:, None, :]  # (N, k, k)
    mass = (same * kernel[:, None, :]).sum(axis=2)  # each slot's class total
    repeat = np.tril(same, k=-1).any(axis=2)  # an earlier slot holds the same class
    mass = np.where(valid & ~repeat, mass, 0.0)
    total = mass.sum(axis=1, keepdims=True)
    weights = np.divide(mass, total, out=np.zeros_like(mass), where=total > 0)
    return ClassPosterior(np.where(valid, labels, -1), weights.astype(np.float32))


def agreement(posterior: ClassPosterior, rows_a: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
    """p_a . p_b for every pair (rows_a[m], rows_b[m]): (M,) float32 in [0, 1]."""
    labels, weights = posterior
    k = labels.shape[1]
    out = np.empty(len(rows_a), dtype=np.float32)
    step = max(1, ELEMENT_BUDGET // max(1, k * k))
    for start in range(0, len(rows_a), step):
        a, b = rows_a[start : start + step], rows_b[start : start + step]
        match = (labels[a][:, :, None] == labels[b][:, None, :]) & (labels[a] >= 0)[:, :, None]
        out[start : start + step] = np.einsum("mi,mij,mj->m", weights[a], match, weights[b])
    return out


def agreement_matrix(posterior: ClassPosterior) -> np.ndarray:
    """p_i . p_j for every ordered pair of the N images: (N, N) float32."""
    n = posterior.labels.shape[0]
    out = np.empty((n, n), dtype=np.float32)
    block = max(1, ELEMENT_BUDGET // max(n, 1))  # rows of the matrix per call
    cols = np.arange(n, dtype=np.int64)
    for start in range(0, n, block):
        rows = np.arange(start, min(start + block, n), dtype=np.int64)
        out[rows] = agreement(posterior, np.repeat(rows, n), np.tile(cols, rows.size)).reshape(
            -1, n
        )
    return out


def blend(similarity: np.ndarray, agreed: np.ndarray, weight: float) -> np.ndarray:
    """(1 - weight) * similarity + weight * agreement, elementwise (any matching shapes)."""
    _, weight = check_params(1.0, weight)
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


def tune_prior(
    similarity: np.ndarray, scores: np.ndarray, hit_labels: np.ndarray, labels: np.ndarray
) -> TunedRerank:
    """The weight in WEIGHTS with the best identity-balanced mAP on a val split scored
    against itself (ties: the earlier one), at the fixed TEMPERATURE.

    similarity: (N, N) of the val images (after any re-ranking); scores, hit_labels: (N, k)
    their top-k hits among labelled photos other than themselves; labels: (N,) int classes.
    """
    plain = set_identity_map(similarity, labels)
    agreed = agreement_matrix(class_posterior(scores, hit_labels, TEMPERATURE))
    best = TunedRerank(METHOD, dict(DEFAULT_PARAMS), -1.0, plain)
    for weight in WEIGHTS:
        val_map = set_identity_map(blend(similarity, agreed, weight), labels)
        if val_map > best.val_map + 1e-9:
            best = TunedRerank(
                METHOD, {"temperature": TEMPERATURE, "weight": weight}, val_map, plain
            )
    return best
