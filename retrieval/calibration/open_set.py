"""Open-set: telling a new individual ("unknown") from a known one, in the decision's own unit.

Why: in the field many photos show animals that are in no gallery. The policy's calibrator and
threshold are chosen on *known* val queries, so they say nothing about how often a new animal
is given a known name. Here we simulate new animals on the val split (whole individuals removed
from the gallery), fit the confidence again on that mix (a new animal's answer is always
wrong), and choose ``unknown_min_confidence``: the confidence below which ``decide`` declines,
so that at most a target share of them is accepted. From then on the confidence means
P(right) where new animals are as common as in the simulation
(``n_unknown / (n_known + n_unknown)``); where they are commoner, it is too high. Where local
matching decides, the mix is decided on each shortlist re-scored by local matches (the same
function as a fused photo search) under the fusion's own policy, which gets its own check.

Simulation caveat: :func:`simulate_open_set` removes whole classes from the gallery, but the model
saw those classes in training, so their embeddings are sharper than a truly unseen animal's; the
measured AUROC / false-accept rate are optimistic. The honest number needs a model trained with
those classes held out (drop their folders from the training data, keep them as val/test queries).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from retrieval.calibration.confidence_fit import fit_calibrator
from retrieval.calibration.threshold import threshold_for_accuracy, threshold_for_unknowns
from retrieval.errors import InputError
from retrieval.selective import expected_calibration_error
from retrieval.serving.decide import (
    Decision,
    DecisionPolicy,
    Features,
    decide_features,
    features,
)
from retrieval.serving.evidence import array_hits, rescore_locally
from retrieval.serving.fusion import Fusion
from retrieval.serving.local_scores import LocalQueries
from retrieval.serving.rules import Rule


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
class OpenSetAnswers:
    """The product's decisions on an open-set mix: decisions (Q,), the features they were
    made from (under ``rule``), top1_scores (Q,) float64 cosine of the nearest photo (the
    global one, also where local matches decided), is_unknown (Q,) bool, query_labels (Q,)
    int64."""

    decisions: list[Decision]
    features: Features
    rule: Rule
    top1_scores: np.ndarray
    is_unknown: np.ndarray
    query_labels: np.ndarray

    def with_policy(self, policy: DecisionPolicy) -> OpenSetAnswers:
        """The same queries decided under another calibrator or threshold of the same rule,
        from the features already computed (no second search)."""
        assert policy.rule == self.rule, "a new rule needs new features: call open_set_answers"
        return replace(self, decisions=decide_features(self.features, policy))

    @property
    def confidence(self) -> np.ndarray:
        return np.array([d.confidence for d in self.decisions], dtype=np.float64)

    @property
    def correct(self) -> np.ndarray:
        """(Q,) bool: the winner is the query's individual (never for an unknown query)."""
        predicted = np.array([d.predicted for d in self.decisions], dtype=np.int64)
        return (predicted == self.query_labels) & ~self.is_unknown


@dataclass(frozen=True)
class LocalMix:
    """What lets local matches re-score the open-set mix as a fused photo search would: the
    gallery's fusion, the query photos (one per query row of the mix), and the photo of each
    row of the full gallery given to :func:`simulate_open_set`."""

    fusion: Fusion
    queries: LocalQueries
    gallery_paths: Sequence[str]


def open_set_answers(
    data: OpenSetData, policy: DecisionPolicy, n_classes: int, *, local: LocalMix | None = None
) -> OpenSetAnswers:
    """Decide every query against the reduced gallery with ``policy``, as ``search.py`` would;
    with ``local``, on each shortlist re-scored by local matches (``policy``: the fusion's)."""
    evidence, rows = array_hits(
        data.query_embeddings,
        data.gallery_embeddings,
        data.gallery_labels,
        n_classes,
        need_means=policy.rule.needs_means,
    )
    top1 = np.where(evidence.hit_labels[:, 0] >= 0, evidence.hit_scores[:, 0], -1.0)
    if local is not None:
        kept = [p for p, keep in zip(local.gallery_paths, data.gallery_kept, strict=True) if keep]
        hit_paths = [[kept[r] if r >= 0 else "" for r in row] for row in rows]
        evidence = rescore_locally(evidence, hit_paths, local.fusion, local.queries).evidence
    f = features(policy.rule, evidence)
    return OpenSetAnswers(
        decide_features(f, policy),
        f,
        policy.rule,
        top1.astype(np.float64),
        data.query_is_unknown,
        data.query_labels,
    )


def choose_open_set_policy(
    answers: OpenSetAnswers, policy: DecisionPolicy, target_false_accept_rate: float
) -> DecisionPolicy:
    """``policy`` with its confidence fitted again on the val mix, the accuracy threshold read
    on that mix and the new-individual threshold for the target false-accept rate (both on
    out-of-fold confidences)."""
    if not 0 <= target_false_accept_rate < 1:
        raise InputError(
            f"need 0 <= target false-accept rate < 1 (e.g. 0.05 accepts at most 5% of unknown "
            f"queries), got {target_false_accept_rate}"
        )
    correct = answers.correct
    fit = fit_calibrator(answers.features.matrix(), correct)
    cut = threshold_for_accuracy(fit.out_of_fold, correct, policy.target_accuracy)
    unknown = threshold_for_unknowns(fit.out_of_fold[answers.is_unknown], target_false_accept_rate)
    return replace(
        policy,
        calibrator=fit.calibrator,
        min_confidence=cut.min_confidence,
        unknown_min_confidence=unknown,
        evidence={
            **policy.evidence,
            "open_set": {
                "n_known": int((~answers.is_unknown).sum()),
                "n_unknown": int(answers.is_unknown.sum()),
                "calibrator": fit.calibrator.describe(),
                "cv_log_loss": fit.log_loss,
                "ece_out_of_fold": expected_calibration_error(fit.out_of_fold, correct),
                "target_false_accept_rate": target_false_accept_rate,
            },
        },
    )
