"""Choosing on val whether, and how, local matches re-score the shortlist (``serving.fusion``).

Labelled val pairs (each val query with its first B gallery hits) fit two isotonic curves,
cosine -> P(same individual) and inliers -> P(same individual), as wildlife-tools' WildFusion
calibrates each matcher. Candidates: shortlist B in ``SHORTLISTS`` x the mean or a logistic of
the two. Each is scored out of fold (two halves of the val queries, each fitted on the other),
by the accuracy of the decision rule val then chooses on the fused evidence, against the
global-only decision on the same queries. ``auto`` keeps local matching only when it wins.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from retrieval.calibration.policy import best_rule_accuracy, choose_policy
from retrieval.selective import accuracy_stderr
from retrieval.serving.decide import TARGET_ACCURACY
from retrieval.serving.fusion import (
    GEOMETRY,
    MAX_KEYPOINTS,
    Curve,
    Fusion,
    fused_evidence,
    fused_order,
    logit,
)
from retrieval.serving.rules import QueryEvidence

SHORTLISTS = (10, 30)  # hits re-scored per query; cost grows with it
COMBINATIONS = ("mean", "logistic")
_FOLD_SEED = 0


def fit_curve(scores: np.ndarray, same: np.ndarray) -> Curve:
    """Isotonic P(same | score) from labelled pairs: scores (n,), same (n,) bool."""
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip", increasing=True)
    iso.fit(np.asarray(scores, np.float64), np.asarray(same, np.float64))
    return Curve(tuple(map(float, iso.X_thresholds_)), tuple(map(float, iso.y_thresholds_)))


def fit_fusion(
    cosines: np.ndarray, inliers: np.ndarray, same: np.ndarray, *, mode: str, shortlist: int
) -> Fusion:
    """Curves (and logistic weights) from pairs: cosines, inliers, same, each (n,)."""
    global_curve, local_curve = fit_curve(cosines, same), fit_curve(inliers, same)
    weights: tuple[float, ...] = ()
    if mode == "logistic":
        x = np.stack([logit(global_curve(cosines)), logit(local_curve(inliers))], axis=1)
        if len(np.unique(same)) < 2:  # nothing to separate: fall back to the mean's weights
            weights = (0.0, 0.5, 0.5)
        else:
            lr = LogisticRegression(C=1.0).fit(x, same)
            weights = (float(lr.intercept_[0]), *map(float, lr.coef_[0]))
    return Fusion(global_curve, local_curve, mode=mode, shortlist=shortlist, weights=weights)


def _pairs(evidence: QueryEvidence, inliers: np.ndarray, truth: np.ndarray, rows: np.ndarray):
    """Labelled (cosine, inliers, same) pairs of the shortlists of query ``rows``."""
    b = inliers.shape[1]
    labels = evidence.hit_labels[rows, :b]
    valid = labels >= 0
    return (
        evidence.hit_scores[rows, :b][valid],
        inliers[rows][valid],
        (labels == truth[rows, None])[valid],
    )


def _apply(fusion: Fusion, evidence: QueryEvidence, inliers: np.ndarray) -> QueryEvidence:
    scores, order = fused_order(fusion, evidence.hit_scores, inliers, evidence.hit_labels)
    return fused_evidence(evidence, scores, order)


def _rows(evidence: QueryEvidence, rows: np.ndarray) -> QueryEvidence:
    means = None if evidence.mean_scores is None else evidence.mean_scores[rows]
    return QueryEvidence(
        evidence.hit_scores[rows], evidence.hit_labels[rows], evidence.class_sizes, means
    )


def out_of_fold_accuracy(
    evidence: QueryEvidence, inliers: np.ndarray, truth: np.ndarray, *, mode: str
) -> float:
    """Decision accuracy with fusion fitted on one half of the queries, applied to the other."""
    n = len(truth)
    halves = np.array_split(np.random.default_rng(_FOLD_SEED).permutation(n), 2)
    scores = np.empty_like(evidence.hit_scores)
    labels = np.empty_like(evidence.hit_labels)
    for test, train in (halves, halves[::-1]):
        fusion = fit_fusion(*_pairs(evidence, inliers, truth, train), mode=mode, shortlist=0)
        fused = _apply(fusion, _rows(evidence, test), inliers[test])
        scores[test], labels[test] = fused.hit_scores, fused.hit_labels
    oof = QueryEvidence(scores, labels, evidence.class_sizes, evidence.mean_scores)
    return best_rule_accuracy(oof, truth)


def choose_fusion(
    evidence: QueryEvidence,
    inliers: np.ndarray,
    truth: np.ndarray,
    *,
    geometry: str = GEOMETRY,
    max_keypoints: int = MAX_KEYPOINTS,
    target_accuracy: float = TARGET_ACCURACY,
) -> Fusion:
    """The best fusion for val queries, and whether it beats global only (``helps``):
    ``evidence`` (global, Q queries), ``inliers`` (Q, B_max) with their first hits, ``truth``
    (Q,). The curves and the policy are then fitted on all the val queries."""
    truth = np.asarray(truth, np.int64)
    global_accuracy = best_rule_accuracy(evidence, truth)
    table = []
    shortlists = [b for b in SHORTLISTS if b <= inliers.shape[1]] or [inliers.shape[1]]
    for b in shortlists:
        for mode in COMBINATIONS:
            acc = out_of_fold_accuracy(evidence, inliers[:, :b], truth, mode=mode)
            table.append({"shortlist": b, "mode": mode, "accuracy": acc})
    best = max(table, key=lambda row: row["accuracy"])  # first wins ties: smaller B, mean
    n, b = len(truth), best["shortlist"]
    pairs = _pairs(evidence, inliers[:, :b], truth, np.arange(n))
    fitted = fit_fusion(*pairs, mode=best["mode"], shortlist=b)
    fused = _apply(fitted, evidence, inliers[:, :b])
    return replace(
        fitted,
        helps=best["accuracy"] > global_accuracy,
        geometry=geometry,
        max_keypoints=max_keypoints,
        policy=choose_policy(fused, truth, target_accuracy=target_accuracy),
        evidence={
            "n_val_queries": n,
            "accuracy_global": global_accuracy,
            "accuracy_fused": best["accuracy"],
            "accuracy_stderr": accuracy_stderr(global_accuracy, n),
            "candidates": table,
        },
    )


def choose_fusion_setting(
    evidence: QueryEvidence,
    inliers_by_setting: dict[tuple[str, str], np.ndarray],
    truth: np.ndarray,
    *,
    max_keypoints: int = MAX_KEYPOINTS,
    target_accuracy: float = TARGET_ACCURACY,
) -> Fusion:
    """``choose_fusion`` for each way the inliers were counted, keyed (foreground, geometry):
    keypoints everywhere or on a foreground estimate, verified by a homography, a fundamental
    matrix or an affine map, each (Q, B_max). The one whose fused decision val scores highest
    out of fold wins; the first given wins ties, so list the simplest first."""
    fits = [
        replace(
            choose_fusion(
                evidence,
                inliers,
                truth,
                geometry=geometry,
                max_keypoints=max_keypoints,
                target_accuracy=target_accuracy,
            ),
            foreground=foreground,
        )
        for (foreground, geometry), inliers in inliers_by_setting.items()
    ]
    best = max(fits, key=lambda f: f.evidence["accuracy_fused"])
    by_setting = {f"{f.foreground}, {f.geometry}": f.evidence["accuracy_fused"] for f in fits}
    return replace(best, evidence={**best.evidence, "settings": by_setting})


def describe_fusion(fusion: Fusion, local_match: str) -> str:
    """One line for the console: what val chose and what ``--local_match`` makes of it."""
    e = fusion.evidence
    figures = (
        f"val decision accuracy {e['accuracy_fused']:.3f} fused vs {e['accuracy_global']:.3f} "
        f"global (+- {e['accuracy_stderr']:.3f}, {e['n_val_queries']} photos)"
    )
    how = (
        f"{fusion.mode} of calibrated scores over the top {fusion.shortlist} hits, "
        f"{fusion.geometry} inliers"
    )
    if fusion.foreground != "none":
        how += f" on the backbone's {fusion.foreground} foreground"
    if local_match == "off":
        return f"local matching: off (--local_match off; {figures})"
    if fusion.helps:
        return f"local matching: on, {how} ({figures})"
    if local_match == "on":
        return f"local matching: on (forced by --local_match on), {how} ({figures})"
    return f"local matching: off, val scores it no better ({figures}); --local_match on forces it"
