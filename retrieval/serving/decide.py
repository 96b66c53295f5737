"""The one decision: a query's evidence -> a named individual with a calibrated confidence, or
"unclassifiable" with the reason (SPEC 5.3).

Photo search, evaluate, the open-set report, closed-set pairs and enrolment all call
:func:`decide` with the policy stored beside the gallery, so they cannot disagree. One unit
judges an answer: the calibrated confidence. It is accepted when it reaches ``min_confidence``
(chosen on val so accepted answers keep the target accuracy) and ``unknown_min_confidence``
(chosen by ``evaluate.py --open_set`` so few new individuals get a known name).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from retrieval.errors import InputError, stored
from retrieval.serving.confidence import Calibrator
from retrieval.serving.rules import (
    REBUILD,
    QueryEvidence,
    Rule,
    class_posterior,
    per_class_best,
)

TARGET_ACCURACY = 0.95  # accuracy kept on accepted val queries (--target_accuracy)
DEFAULT_MIN_CONFIDENCE = 0.5  # before any val split: accept when the share is at least half


@dataclass(frozen=True)
class DecisionPolicy:
    """Everything ``decide`` applies, as chosen on val and stored with the gallery.

    evidence: what val measured when choosing (printed by evaluate; not read by ``decide``).
    """

    rule: Rule = field(default_factory=lambda: Rule("nearest"))
    calibrator: Calibrator = field(default_factory=Calibrator)
    min_confidence: float = DEFAULT_MIN_CONFIDENCE
    target_accuracy: float = TARGET_ACCURACY
    unknown_min_confidence: float = 0.0
    evidence: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for name in ("min_confidence", "unknown_min_confidence"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 <= value <= 1.0 + 1e-9):
                raise InputError(f"{name} must lie in 0..1, got {value}")
        if not 0 < self.target_accuracy <= 1:
            raise InputError(f"target accuracy must lie in (0, 1], got {self.target_accuracy}")

    @property
    def threshold(self) -> float:
        """The confidence an answer needs to be accepted."""
        return max(self.min_confidence, self.unknown_min_confidence)

    def to_dict(self) -> dict:
        return {
            "rule": self.rule.to_dict(),
            "calibrator": self.calibrator.to_dict(),
            "min_confidence": self.min_confidence,
            "target_accuracy": self.target_accuracy,
            "unknown_min_confidence": self.unknown_min_confidence,
            "evidence": self.evidence,
        }

    @classmethod
    def from_dict(cls, data: dict) -> DecisionPolicy:
        with stored("decision policy", REBUILD):
            return cls(
                rule=Rule.from_dict(data["rule"]),
                calibrator=Calibrator.from_dict(data["calibrator"]),
                evidence=dict(data.get("evidence") or {}),
                **{
                    k: float(data[k])
                    for k in ("min_confidence", "target_accuracy", "unknown_min_confidence")
                },
            )


class Features(NamedTuple):
    """Per query (Q,), about the rule's winner: ``predicted`` (-1: no hit) and ``runner_up``
    (-1: none) class, posterior ``share`` and ``runner_up_share``, ``top_score`` (cosine of
    the winner's best photo among the hits), ``agree`` of the winner's ``of`` gallery photos
    rank among the nearest ``of`` (capped at the hits fetched)."""

    predicted: np.ndarray
    runner_up: np.ndarray
    share: np.ndarray
    runner_up_share: np.ndarray
    top_score: np.ndarray
    agree: np.ndarray
    of: np.ndarray

    def matrix(self) -> np.ndarray:
        """(Q, 4) float64 in the order of ``confidence.FEATURES``."""
        support = self.agree / np.maximum(self.of, 1)
        margin = self.share - self.runner_up_share
        return np.stack([self.top_score, self.share, margin, support], axis=1)


def features(rule: Rule, evidence: QueryEvidence) -> Features:
    """The winner of ``rule`` and what speaks for it, for every query."""
    posterior = class_posterior(rule, evidence)
    n = posterior.shape[0]
    has_hit = posterior.sum(axis=1) > 0
    order = np.argsort(-posterior, axis=1, kind="stable")[:, :2]
    rows = np.arange(n)
    predicted = np.where(has_hit, order[:, 0], -1)
    second = order[:, 1] if posterior.shape[1] > 1 else np.zeros(n, dtype=np.int64)
    runner_share = posterior[rows, second] if posterior.shape[1] > 1 else np.zeros(n)
    runner_up = np.where(has_hit & (runner_share > 0), second, -1)
    safe = np.maximum(predicted, 0)
    best = per_class_best(evidence)[rows, safe]
    found = evidence.hit_labels >= 0
    last = np.where(found, evidence.hit_scores, np.inf).min(axis=1, initial=np.inf)
    top_score = np.where(np.isfinite(best), best, np.where(np.isfinite(last), last, -1.0))
    k = evidence.hit_labels.shape[1]
    of = evidence.class_sizes[safe]
    reach = np.minimum(of, k)
    within = np.arange(k)[None, :] < reach[:, None]
    agree = ((evidence.hit_labels == safe[:, None]) & within).sum(axis=1)
    return Features(
        predicted=predicted,
        runner_up=runner_up,
        share=np.where(has_hit, posterior[rows, safe], 0.0),
        runner_up_share=np.where(runner_up >= 0, runner_share, 0.0),
        top_score=np.where(has_hit, top_score, -1.0),
        agree=np.where(has_hit, agree, 0),
        of=np.where(has_hit, of, 0),
    )


@dataclass(frozen=True)
class Decision:
    """The answer for one query.

    label: the accepted class, None when rejected. predicted: the rule's winner even when
    rejected (-1: no gallery photo to compare with). confidence: calibrated P(predicted is
    right). reason: "accepted", or why not, for a person to read.
    """

    label: int | None
    predicted: int
    confidence: float
    reason: str
    share: float
    runner_up: int
    runner_up_share: float
    top_score: float
    agree: int
    of: int

    @property
    def accepted(self) -> bool:
        return self.label is not None


def _reason(
    f: Features, i: int, confidence: float, policy: DecisionPolicy, name, score_name: str
) -> str:
    """Why an answer is declined, for a person: two individuals share the evidence (the
    runner-up holds at least half the winner's share: reshoot), or nothing known is close
    enough to be sure (a new individual, or a poor photo)."""
    if f.predicted[i] < 0:
        return "unclassifiable: the gallery has no photo to compare with"
    if confidence >= policy.threshold:
        return "accepted"
    if f.runner_up[i] >= 0 and f.runner_up_share[i] >= f.share[i] / 2:
        return (
            f"unclassifiable: split between {name(f.predicted[i])} ({f.share[i]:.2f}) and "
            f"{name(f.runner_up[i])} ({f.runner_up_share[i]:.2f}) - reshoot"
        )
    return (
        f"unclassifiable: nearest match is far ({name(f.predicted[i])} at {score_name} "
        f"{f.top_score[i]:.2f}, confidence {confidence:.2f} < {policy.threshold:.2f}; likely a "
        "new individual, or reshoot)"
    )


def decide(
    evidence: QueryEvidence,
    policy: DecisionPolicy,
    *,
    class_names: Sequence[str] | None = None,
    score_name: str = "cosine",
) -> list[Decision]:
    """One decision per query row of ``evidence`` under ``policy``; ``class_names`` and
    ``score_name`` (what the hit scores are) only make the reasons readable."""
    if evidence.hit_scores.shape != evidence.hit_labels.shape:
        raise InputError("hit scores and labels must have one (Q, k) shape")
    f = features(policy.rule, evidence)
    return decide_features(f, policy, class_names=class_names, score_name=score_name)


def decide_features(
    f: Features,
    policy: DecisionPolicy,
    *,
    class_names: Sequence[str] | None = None,
    score_name: str = "cosine",
) -> list[Decision]:
    """``decide`` from features already computed under ``policy.rule`` (another calibrator
    or threshold of the same rule decides again without searching again)."""
    confidence = np.where(f.predicted >= 0, policy.calibrator(f.matrix()), 0.0)

    def name(label: int) -> str:
        return str(class_names[label]) if class_names is not None else str(int(label))

    out = []
    for i in range(len(f.predicted)):
        conf = float(confidence[i])
        reason = _reason(f, i, conf, policy, name, score_name)
        out.append(
            Decision(
                label=int(f.predicted[i]) if reason == "accepted" else None,
                predicted=int(f.predicted[i]),
                confidence=conf,
                reason=reason,
                share=float(f.share[i]),
                runner_up=int(f.runner_up[i]),
                runner_up_share=float(f.runner_up_share[i]),
                top_score=float(f.top_score[i]),
                agree=int(f.agree[i]),
                of=int(f.of[i]),
            )
        )
    return out


def predicted_labels(decisions: Sequence[Decision]) -> np.ndarray:
    """(Q,) int64 winners, accepted or not (-1: no hit)."""
    return np.array([d.predicted for d in decisions], dtype=np.int64)
