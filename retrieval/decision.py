"""The decision on top of a search: weighted voting with rejection, and its calibration.

Why: the nearest neighbour alone is brittle; summing 1/d weights per class over the top 20
lets several close images of one individual outvote a single look-alike, and two checks turn
doubtful cases into "reshoot recommended" instead of a confident wrong answer (SPEC 5.3):
the nearest match is too far (unknown individual or bad photo), or the vote is split.
The thresholds are calibrated on validation queries to reach a target accuracy on what is
accepted while accepting as much as possible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np

from retrieval.errors import InputError

VOTE_TOP_N = 20  # neighbours that vote (SPEC 5.3)
TARGET_ACCURACY = 0.95  # accuracy kept on accepted validation queries when calibrating


@dataclass(frozen=True)
class Thresholds:
    """When to refuse a decision. The defaults are placeholders that calibration overwrites.

    max_distance: reject when the nearest match's L2 distance between unit vectors is above
    this (1.2 ~ cosine 0.28). min_margin: reject when (top1 - top2) vote / total vote is below.
    """

    max_distance: float = 1.2
    min_margin: float = 0.05

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_distance) and self.max_distance >= 0):
            raise InputError(
                f"max_distance must be a finite number >= 0 (L2 on unit vectors, 0..2), "
                f"got {self.max_distance}"
            )
        if not (math.isfinite(self.min_margin) and 0 <= self.min_margin <= 1):
            raise InputError(f"min_margin must lie in 0..1, got {self.min_margin}")

    def to_dict(self) -> dict[str, float]:
        """Same as :func:`thresholds_to_dict`."""
        return thresholds_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Thresholds:
        """Same as :func:`thresholds_from_dict`."""
        return thresholds_from_dict(data)


def thresholds_to_dict(thresholds: Thresholds) -> dict[str, float]:
    """JSON-ready form, stored beside the gallery."""
    return {key: float(value) for key, value in asdict(thresholds).items()}


def thresholds_from_dict(data: dict) -> Thresholds:
    """Inverse of :func:`thresholds_to_dict`; unknown or missing keys are an input error."""
    expected = {f.name for f in fields(Thresholds)}
    if not isinstance(data, dict) or set(data) != expected:
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise InputError(
            f"thresholds must have exactly the keys {sorted(expected)}, found {found}; "
            "re-run calibration or fix the saved file"
        )
    values = {}
    for key in sorted(expected):
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"threshold {key} must be a number, got {value!r}")
        values[key] = float(value)
    return Thresholds(**values)


@dataclass(frozen=True)
class Decision:
    """Outcome of voting for one query.

    label: winning class, or None when the query is rejected ("unclassifiable").
    confidence: winning class's share of the total vote weight, 0..1.
    margin: (top1 vote - top2 vote) / total vote, 0..1.
    top1_distance: L2 distance of the nearest valid neighbour (inf when there is none).
    votes: (class, weight) pairs, heaviest first.
    """

    label: int | None
    confidence: float
    margin: float
    top1_distance: float
    reason: str
    votes: tuple[tuple[int, float], ...]

    @property
    def accepted(self) -> bool:
        """True when a class was chosen."""
        return self.label is not None


def _vote_stats(
    labels: np.ndarray, distances: np.ndarray, top_n: int, eps: float
) -> tuple[tuple[tuple[int, float], ...], float, float, float]:
    """Votes sorted desc, confidence, margin and top-1 distance for one query."""
    keep = labels >= 0
    labels, distances = labels[keep], distances[keep]
    order = np.argsort(distances, kind="stable")[:top_n]
    labels, distances = labels[order], distances[order]
    if labels.size == 0:
        return (), 0.0, 0.0, math.inf
    weights = 1.0 / np.maximum(distances.astype(np.float64), eps)
    classes, slot = np.unique(labels, return_inverse=True)
    totals = np.bincount(slot, weights=weights)
    ranking = np.lexsort((classes, -totals))  # heaviest first, ties by class index
    votes = tuple((int(classes[i]), float(totals[i])) for i in ranking)
    total = float(totals.sum())
    second = votes[1][1] if len(votes) > 1 else 0.0
    return votes, votes[0][1] / total, (votes[0][1] - second) / total, float(distances[0])


def _check_row(labels: np.ndarray, distances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, distances = np.asarray(labels), np.asarray(distances, dtype=np.float64)
    if labels.ndim != 1 or labels.shape != distances.shape:
        raise InputError(
            f"labels and distances must be 1-D of equal length, got {labels.shape} and "
            f"{distances.shape}"
        )
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"labels must be integers (-1 = padding), got {labels.dtype}")
    valid = labels >= 0
    if not (np.isfinite(distances[valid]).all() and (distances[valid] >= 0).all()):
        raise InputError("distances must be finite and >= 0 for every neighbour with a label")
    return labels.astype(np.int64), distances


def vote(
    labels: np.ndarray,
    distances: np.ndarray,
    *,
    top_n: int = 20,
    eps: float = 1e-6,
    thresholds: Thresholds,
    class_names: Sequence[str] | None = None,
) -> Decision:
    """Weighted vote over the nearest ``top_n`` neighbours of one query, with rejection.

    labels: (k,) int class of each neighbour (-1 = padding, ignored); distances: (k,) float L2.
    Each neighbour adds 1 / max(d, eps) to its class (eps guards an exact duplicate, d = 0).
    Rejected when the nearest distance > thresholds.max_distance (checked first) or the
    margin < thresholds.min_margin. ``class_names`` only makes the reason readable.
    """
    if top_n < 1 or eps <= 0:
        raise InputError(f"top_n must be >= 1 and eps > 0, got top_n={top_n}, eps={eps}")
    labels, distances = _check_row(labels, distances)
    votes, confidence, margin, top1 = _vote_stats(labels, distances, top_n, eps)
    if not votes:
        reason = "reshoot recommended: no gallery neighbours to vote"
    elif top1 > thresholds.max_distance:
        reason = (
            f"reshoot recommended: nearest match too far "
            f"(d={top1:.3f} > {thresholds.max_distance:.3f})"
        )
    elif margin < thresholds.min_margin:
        first, second = votes[0][0], votes[1][0] if len(votes) > 1 else votes[0][0]
        if class_names is not None:
            first, second = class_names[first], class_names[second]
        reason = (
            f"reshoot recommended: ambiguous between {first} and {second} "
            f"(margin {margin:.3f} < {thresholds.min_margin:.3f})"
        )
    else:
        reason = "accepted"
    label = votes[0][0] if reason == "accepted" else None
    return Decision(label, confidence, margin, top1, reason, votes)


def vote_batch(
    labels: np.ndarray,
    distances: np.ndarray,
    *,
    top_n: int = 20,
    eps: float = 1e-6,
    thresholds: Thresholds,
    class_names: Sequence[str] | None = None,
) -> list[Decision]:
    """:func:`vote` for each row. labels: (Q, k) int; distances: (Q, k) float L2."""
    labels, distances = np.asarray(labels), np.asarray(distances)
    if labels.ndim != 2 or labels.shape != distances.shape:
        raise InputError(
            f"labels and distances must be (Q, k) of equal shape, got {labels.shape} and "
            f"{distances.shape}"
        )
    return [
        vote(
            row_labels,
            row_distances,
            top_n=top_n,
            eps=eps,
            thresholds=thresholds,
            class_names=class_names,
        )
        for row_labels, row_distances in zip(labels, distances, strict=True)
    ]


def accuracy_coverage(
    decisions: Sequence[Decision], true_labels: np.ndarray
) -> tuple[float, float]:
    """(accuracy on accepted queries, share of queries accepted).

    true_labels: (Q,) int. Accuracy is NaN when nothing is accepted (undefined, not 0).
    """
    true_labels = np.asarray(true_labels)
    if true_labels.shape != (len(decisions),):
        raise InputError(
            f"true_labels must have one entry per decision ({len(decisions)}), "
            f"got shape {true_labels.shape}"
        )
    accepted = np.array([d.accepted for d in decisions], dtype=bool)
    if not accepted.any():
        return math.nan, 0.0
    predicted = np.array([d.label if d.accepted else -1 for d in decisions])
    accuracy = float((predicted[accepted] == true_labels[accepted]).mean())
    return accuracy, float(accepted.mean())


@dataclass(frozen=True)
class CalibrationResult:
    """Chosen thresholds and how they did on the calibration queries.

    met_target is False when no setting reached target_accuracy; the thresholds are then the
    ones with the best accuracy.
    """

    thresholds: Thresholds
    accuracy: float
    coverage: float
    met_target: bool
    target_accuracy: float


def _query_stats(
    labels: np.ndarray, distances: np.ndarray, top_n: int, eps: float
) -> tuple[np.ndarray, ...]:
    """Per query: predicted class (-1 = none), top-1 distance, margin. Each (Q,)."""
    predicted, top1, margin = [], [], []
    for row_labels, row_distances in zip(labels, distances, strict=True):
        votes, _, row_margin, row_top1 = _vote_stats(
            *_check_row(row_labels, row_distances), top_n, eps
        )
        predicted.append(votes[0][0] if votes else -1)
        top1.append(row_top1)
        margin.append(row_margin)
    return np.array(predicted, dtype=np.int64), np.array(top1), np.array(margin)


def _candidates(values: np.ndarray, n_grid: int, extra: float | None = None) -> np.ndarray:
    """Observed values at n_grid + 1 evenly spaced quantiles (sorted, unique)."""
    levels = np.linspace(0.0, 1.0, n_grid + 1)
    picked = np.quantile(values, levels, method="inverted_cdf")
    return np.unique(picked if extra is None else np.append(picked, extra))


def calibrate_thresholds(
    labels: np.ndarray,
    distances: np.ndarray,
    true_labels: np.ndarray,
    *,
    target_accuracy: float = 0.95,
    top_n: int = 20,
    eps: float = 1e-6,
    n_grid: int = 50,
) -> CalibrationResult:
    """Pick (max_distance, min_margin) on validation queries: accuracy on accepted queries
    >= target_accuracy with the largest coverage.

    labels, distances: (Q, k) neighbours of each validation query (as for :func:`vote_batch`);
    true_labels: (Q,) int. Candidates are observed top-1 distances and margins at n_grid + 1
    quantiles (plus margin 0); every pair is tried. Ties go to higher accuracy, then the
    larger max_distance and the smaller min_margin (the looser setting). Deterministic.
    """
    labels, distances = np.asarray(labels), np.asarray(distances)
    true_labels = np.asarray(true_labels)
    if labels.ndim != 2 or labels.shape != distances.shape or true_labels.shape != labels.shape[:1]:
        raise InputError(
            f"need labels and distances (Q, k) and true_labels (Q,), got {labels.shape}, "
            f"{distances.shape} and {true_labels.shape}"
        )
    if not 0 < target_accuracy <= 1 or n_grid < 1 or top_n < 1 or eps <= 0:
        raise InputError(
            f"need 0 < target_accuracy <= 1, n_grid >= 1, top_n >= 1, eps > 0; got "
            f"{target_accuracy}, {n_grid}, {top_n}, {eps}"
        )
    predicted, top1, margin = _query_stats(labels, distances, top_n, eps)
    has_vote = predicted >= 0
    if not has_vote.any():
        raise InputError("no validation query has a gallery neighbour; cannot calibrate")
    correct = predicted == true_labels
    d_grid = _candidates(top1[has_vote], n_grid)
    m_grid = _candidates(margin[has_vote], n_grid, extra=0.0)
    # accepted[i, j, q]: query q accepted under (d_grid[i], m_grid[j]); queries without votes never
    by_distance = (top1[None, :] <= d_grid[:, None]) & has_vote  # (D, Q)
    by_margin = margin[None, :] >= m_grid[:, None]  # (M, Q)
    n_accepted = by_distance.astype(np.int64) @ by_margin.T.astype(np.int64)  # (D, M)
    n_correct = (by_distance & correct).astype(np.int64) @ by_margin.T.astype(np.int64)
    coverage = n_accepted / len(predicted)
    accuracy = np.where(n_accepted > 0, n_correct / np.maximum(n_accepted, 1), -1.0)
    met = accuracy >= target_accuracy
    d_key, m_key = np.meshgrid(d_grid, m_grid, indexing="ij")
    primary, secondary = (coverage, accuracy) if met.any() else (accuracy, coverage)
    pool = met if met.any() else n_accepted > 0
    # lexsort: last key is primary; pick the best of the pool
    order = np.lexsort((m_key[pool], -d_key[pool], -secondary[pool], -primary[pool]))
    i, j = np.argwhere(pool)[order[0]]
    return CalibrationResult(
        thresholds=Thresholds(max_distance=float(d_grid[i]), min_margin=float(m_grid[j])),
        accuracy=float(accuracy[i, j]),
        coverage=float(coverage[i, j]),
        met_target=bool(met.any()),
        target_accuracy=float(target_accuracy),
    )
