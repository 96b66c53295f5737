"""Open-set calibration: telling a new individual ("unknown") from a known one, with honest odds.

Why: in the field many photos show animals that are in no gallery. The closed-set thresholds in
:mod:`retrieval.decision` are tuned for accuracy on *known* queries, so they say nothing about how
often a new animal is wrongly given a known name. Here we simulate new animals on the validation
split, cut the top-1 cosine so that at most a target share of them is accepted, and fit
P(top-1 match is the same individual | top-1 cosine) so a search can print a probability that
means what it says.

Simulation caveat: :func:`simulate_open_set` removes whole classes from the gallery, but the model
saw those classes in training, so their embeddings are sharper than a truly unseen animal's; the
measured AUROC / false-accept rate are optimistic. The honest number needs a model trained with
those classes held out (drop their folders from the training data, keep them as val/test queries).
The calibrated probability also depends on the share of unknown queries it was fitted on
(``n_unknown / (n_known + n_unknown)``): where new animals are commoner, it is too high.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from retrieval.decision import Thresholds, vote_batch
from retrieval.errors import InputError
from retrieval.index import FlatIndex

ECE_BINS = 10
MIN_ISOTONIC_POINTS = 100  # fewer calibration queries: a 2-parameter logistic curve instead
LOGISTIC_C = 100.0  # light L2 penalty: keeps separable data finite, barely bends the fit
_FAR_EPS = 1e-9  # floor(0.29 * 100) would be 28 without it


# --------------------------------------------------------------------------- small maths
def _scores(values: np.ndarray, name: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise InputError(f"{name} must be a non-empty 1-D array, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise InputError(f"{name} contains NaN or inf; pass finite scores")
    return values


def roc_auc(scores_positive: np.ndarray, scores_negative: np.ndarray) -> float:
    """P(a random positive scores above a random negative), ties counted half (Mann-Whitney U).

    scores_positive: (P,) float (known queries); scores_negative: (N,) float (unknown queries).
    """
    pos = _scores(scores_positive, "scores_positive")
    neg = np.sort(_scores(scores_negative, "scores_negative"))
    below = np.searchsorted(neg, pos, side="left")
    tied = np.searchsorted(neg, pos, side="right") - below
    return float((below.sum() + 0.5 * tied.sum()) / (pos.size * neg.size))


def expected_calibration_error(
    probabilities: np.ndarray, outcomes: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """Sum over equal-width bins of (bin share) * |mean probability - observed frequency|.

    probabilities: (N,) float in [0, 1]; outcomes: (N,) bool. Bin of p = floor(p * n_bins),
    p = 1 in the last bin; empty bins add nothing.
    """
    p = _scores(probabilities, "probabilities")
    y = np.asarray(outcomes)
    if y.shape != p.shape:
        raise InputError(f"outcomes must match probabilities {p.shape}, got {y.shape}")
    if p.min() < 0 or p.max() > 1 or n_bins < 1:
        raise InputError(f"need probabilities in [0, 1] and n_bins >= 1, got n_bins={n_bins}")
    bins = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    gap = np.bincount(bins, weights=p, minlength=n_bins) - np.bincount(
        bins, weights=y.astype(np.float64), minlength=n_bins
    )
    return float(np.abs(gap).sum() / count.sum())


# --------------------------------------------------------------------------- simulation
def choose_unknown_classes(
    class_labels: np.ndarray, *, fraction: float = 0.2, seed: int = 0
) -> np.ndarray:
    """Whole classes to play "new individuals": round(fraction * n), at least 1, at most n - 1.

    class_labels: (n,) int classes present among the queries (duplicates and order ignored).
    Returns (u,) int64, sorted; the same for the same seed and set of classes.
    """
    classes = np.unique(np.asarray(class_labels).astype(np.int64))
    if classes.size < 2 or not 0 < fraction < 1:
        raise InputError(
            f"need >= 2 classes and 0 < fraction < 1 to hold classes out, got {classes.size} "
            f"classes and fraction={fraction}; use a split with more individuals"
        )
    n_pick = min(max(1, math.floor(fraction * classes.size + 0.5)), classes.size - 1)
    picked = np.random.default_rng(seed).choice(classes, size=n_pick, replace=False)
    return np.sort(picked)


@dataclass(frozen=True, eq=False)
class OpenSetData:
    """A gallery without the held-out classes, and queries marked known / unknown.

    gallery_embeddings: (G', D) float32; gallery_labels: (G',) int64; gallery_kept: (G,) bool
    rows of the original gallery kept. query_*: unchanged (Q, D) / (Q,). query_is_unknown: (Q,)
    bool, True when no gallery item of the query's class is left. unknown_classes: (u,) int64.
    """

    gallery_embeddings: np.ndarray
    gallery_labels: np.ndarray
    gallery_kept: np.ndarray
    query_embeddings: np.ndarray
    query_labels: np.ndarray
    query_is_unknown: np.ndarray
    unknown_classes: np.ndarray


def simulate_open_set(
    gallery_labels: np.ndarray,
    gallery_embeddings: np.ndarray,
    query_labels: np.ndarray,
    query_embeddings: np.ndarray,
    unknown_classes: np.ndarray,
) -> OpenSetData:
    """Remove ``unknown_classes`` from the gallery so their queries, like a new animal's, have no
    match. Optimistic: the model was trained on these classes (see the module docstring).

    gallery_labels: (G,) int; gallery_embeddings: (G, D); query_labels: (Q,) int;
    query_embeddings: (Q, D); unknown_classes: (u,) int.
    """
    g_labels, q_labels = np.asarray(gallery_labels), np.asarray(query_labels)
    g_emb, q_emb = np.asarray(gallery_embeddings), np.asarray(query_embeddings)
    if g_emb.ndim != 2 or q_emb.ndim != 2 or g_emb.shape[1] != q_emb.shape[1]:
        raise InputError(f"embeddings must be (G, D) and (Q, D), got {g_emb.shape}, {q_emb.shape}")
    if g_labels.shape != g_emb.shape[:1] or q_labels.shape != q_emb.shape[:1]:
        raise InputError("gallery/query labels need one entry per embedding row")
    unknown = np.unique(np.asarray(unknown_classes).astype(np.int64))
    kept = ~np.isin(g_labels, unknown)
    is_unknown = ~np.isin(q_labels, g_labels[kept])
    if not kept.any() or is_unknown.all() or not is_unknown.any():
        raise InputError(
            f"holding out classes {unknown.tolist()} leaves {int(kept.sum())} gallery items, "
            f"{int((~is_unknown).sum())} known and {int(is_unknown.sum())} unknown queries; "
            "each must be > 0: hold out classes that have queries in this split, but not all"
        )
    return OpenSetData(
        gallery_embeddings=np.ascontiguousarray(g_emb[kept], dtype=np.float32),
        gallery_labels=g_labels[kept].astype(np.int64),
        gallery_kept=kept,
        query_embeddings=np.ascontiguousarray(q_emb, dtype=np.float32),
        query_labels=q_labels.astype(np.int64),
        query_is_unknown=is_unknown,
        unknown_classes=unknown,
    )


@dataclass(frozen=True, eq=False)
class OpenSetScores:
    """Per query (Q,): top-1 cosine (float64), whether the top-1 match has the query's class
    (bool, always False for unknown queries), the vote's confidence (float64, 0..1) and
    is_unknown (bool)."""

    top1_scores: np.ndarray
    top1_correct: np.ndarray
    vote_confidence: np.ndarray
    is_unknown: np.ndarray


def open_set_scores(data: OpenSetData, *, top_n: int = 20) -> OpenSetScores:
    """Search the reduced gallery (exact, :class:`FlatIndex`) and vote over ``top_n`` neighbours."""
    index = FlatIndex(data.gallery_embeddings.shape[1], use_gpu=False)
    index.add_with_ids(data.gallery_embeddings, np.arange(data.gallery_labels.size))
    result = index.search(data.query_embeddings, top_n)
    found = result.indices >= 0
    labels = np.where(found, data.gallery_labels[np.clip(result.indices, 0, None)], -1)
    decisions = vote_batch(
        labels, result.distances, top_n=top_n, thresholds=Thresholds(max_distance=4.0)
    )
    return OpenSetScores(
        top1_scores=result.scores[:, 0].astype(np.float64),
        top1_correct=labels[:, 0] == data.query_labels,
        vote_confidence=np.array([d.confidence for d in decisions], dtype=np.float64),
        is_unknown=data.query_is_unknown.copy(),
    )


# --------------------------------------------------------------------------- calibration
@dataclass(frozen=True)
class ProbabilityCurve:
    """P(same individual | top-1 cosine) as plain numbers, evaluated without sklearn.

    isotonic: piecewise linear through (scores, probabilities), flat outside (= sklearn's
    ``IsotonicRegression.predict`` with ``out_of_bounds="clip"``). logistic: 1 / (1 + exp(-(coef
    * s + intercept))); scores/probabilities are then empty.
    """

    method: str
    scores: tuple[float, ...] = ()
    probabilities: tuple[float, ...] = ()
    coef: float = 0.0
    intercept: float = 0.0

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        """scores: (N,) cosine -> (N,) float64 probabilities."""
        s = np.asarray(scores, dtype=np.float64)
        if self.method == "isotonic":
            return np.interp(s, self.scores, self.probabilities)
        return 0.5 * (1.0 + np.tanh(0.5 * (self.coef * s + self.intercept)))  # overflow-free


def _fit_curve(scores: np.ndarray, outcomes: np.ndarray, method: str) -> ProbabilityCurve:
    """Fit on (N,) scores and (N,) bool outcomes; one outcome class only: a constant isotonic."""
    if method == "logistic" and np.unique(outcomes).size == 2:
        model = LogisticRegression(C=LOGISTIC_C).fit(scores[:, None], outcomes.astype(int))
        coef, intercept = float(model.coef_[0, 0]), float(model.intercept_[0])
        return ProbabilityCurve("logistic", coef=coef, intercept=intercept)
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(scores, outcomes)
    return ProbabilityCurve(
        "isotonic",
        scores=tuple(float(v) for v in iso.X_thresholds_),
        probabilities=tuple(float(v) for v in iso.y_thresholds_),
    )


def _cross_fitted(scores: np.ndarray, outcomes: np.ndarray, method: str, n_folds: int):
    """Out-of-fold probabilities (N,): folds interleaved by score rank, so no RNG is needed."""
    n_folds = min(n_folds, scores.size)
    fold = np.empty(scores.size, dtype=np.int64)
    fold[np.argsort(scores, kind="stable")] = np.arange(scores.size) % n_folds
    out = np.empty(scores.size, dtype=np.float64)
    for f in range(n_folds):
        train = fold != f
        out[~train] = _fit_curve(scores[train], outcomes[train], method)(scores[~train])
    return out


@dataclass(frozen=True)
class OpenSetCalibration:
    """The open-set accept rule and probability curve, JSON-ready for the gallery meta.

    Accept a query as a known individual iff top-1 cosine > threshold_score (equivalently top-1 L2
    < threshold_distance). ece_before: raw cosine clipped to [0, 1] read as a probability;
    ece_after: the curve's out-of-fold (cross-fitted) probabilities, both on the calibration data.
    """

    threshold_score: float
    threshold_distance: float
    target_false_accept_rate: float
    curve: ProbabilityCurve
    note: str
    n_known: int
    n_unknown: int
    ece_before: float
    ece_after: float

    def probability(self, top1_scores: np.ndarray) -> np.ndarray:
        """P(top-1 match is the same individual): (N,) cosine -> (N,) float64 in [0, 1]."""
        return self.curve(top1_scores)

    def accepts(self, top1_scores: np.ndarray) -> np.ndarray:
        """(N,) cosine -> (N,) bool, True for queries taken as a known individual."""
        return np.asarray(top1_scores, dtype=np.float64) > self.threshold_score

    def to_dict(self) -> dict:
        """JSON-ready (lists and floats only)."""
        out = asdict(self)
        out["curve"]["scores"] = list(self.curve.scores)
        out["curve"]["probabilities"] = list(self.curve.probabilities)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> OpenSetCalibration:
        """Inverse of :meth:`to_dict`; a damaged entry is an InputError."""
        try:
            c = data["curve"]
            xs, ys = tuple(map(float, c["scores"])), tuple(map(float, c["probabilities"]))
            bad_points = c["method"] == "isotonic" and not 0 < len(xs) == len(ys)
            if c["method"] not in ("isotonic", "logistic") or bad_points:
                raise ValueError(f"bad {c['method']!r} curve with {len(xs)}/{len(ys)} points")
            curve = ProbabilityCurve(c["method"], xs, ys, float(c["coef"]), float(c["intercept"]))
            floats = ("threshold_score", "threshold_distance", "target_false_accept_rate")
            floats += ("ece_before", "ece_after")
            return cls(
                curve=curve,
                note=str(data["note"]),
                n_known=int(data["n_known"]),
                n_unknown=int(data["n_unknown"]),
                **{key: float(data[key]) for key in floats},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(
                f"the stored open-set calibration is damaged ({exc}); re-run "
                "evaluate.py --open_set to recalibrate"
            ) from None


def calibrate_open_set(
    top1_scores_known: np.ndarray,
    top1_correct_known: np.ndarray,
    top1_scores_unknown: np.ndarray,
    *,
    target_false_accept_rate: float = 0.05,
    min_isotonic_points: int = MIN_ISOTONIC_POINTS,
    n_folds: int = 5,
) -> OpenSetCalibration:
    """Accept threshold on the top-1 cosine and the P(same individual | cosine) curve.

    top1_scores_known: (K,) cosine; top1_correct_known: (K,) bool; top1_scores_unknown: (U,).
    Threshold rule (deterministic): m = floor(target * U); the threshold is the (m + 1)-th
    highest unknown score and acceptance is strict (>), so at most m unknown queries are accepted
    even with ties. The curve: isotonic regression of is_same (known and correct; unknowns count
    as not same) on the score with >= min_isotonic_points queries, else a logistic fit.
    """
    known = _scores(top1_scores_known, "top1_scores_known")
    unknown = _scores(top1_scores_unknown, "top1_scores_unknown")
    correct = np.asarray(top1_correct_known, dtype=bool)
    if not 0 <= target_false_accept_rate < 1 or n_folds < 2:
        raise InputError(
            f"need 0 <= target_false_accept_rate < 1 (e.g. 0.05 accepts at most 5% of unknown "
            f"queries) and n_folds >= 2, got {target_false_accept_rate} and {n_folds}"
        )
    if correct.shape != known.shape or not correct.any():
        raise InputError(
            f"top1_correct_known must be (K={known.size},) bool with at least one True, got "
            f"{correct.shape} with {int(correct.sum())} True; no correct match to calibrate on"
        )
    m = math.floor(target_false_accept_rate * unknown.size + _FAR_EPS)
    threshold = float(np.sort(unknown)[::-1][m])
    scores = np.concatenate([known, unknown])
    outcomes = np.concatenate([correct, np.zeros(unknown.size, dtype=bool)])
    n = scores.size
    if n >= min_isotonic_points:
        method, note = "isotonic", f"isotonic regression on {n} queries"
    else:
        method = "logistic"
        note = f"logistic fit: only {n} queries (< {min_isotonic_points} for isotonic regression)"
    return OpenSetCalibration(
        threshold_score=threshold,
        threshold_distance=math.sqrt(max(0.0, 2.0 - 2.0 * threshold)),
        target_false_accept_rate=float(target_false_accept_rate),
        curve=_fit_curve(scores, outcomes, method),
        note=note,
        n_known=int(known.size),
        n_unknown=int(unknown.size),
        ece_before=expected_calibration_error(np.clip(scores, 0.0, 1.0), outcomes),
        ece_after=expected_calibration_error(
            _cross_fitted(scores, outcomes, method, n_folds), outcomes
        ),
    )


def calibrate_from_scores(
    scores: OpenSetScores, *, target_false_accept_rate: float = 0.05
) -> OpenSetCalibration:
    """:func:`calibrate_open_set` on the output of :func:`open_set_scores`."""
    known = ~scores.is_unknown
    return calibrate_open_set(
        scores.top1_scores[known],
        scores.top1_correct[known],
        scores.top1_scores[scores.is_unknown],
        target_false_accept_rate=target_false_accept_rate,
    )
