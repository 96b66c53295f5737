"""Decision rules: how one query's search hits become a mass per class (SPEC 5.3).

Why several: with 1-4 gallery photos an individual the 1/d vote over the top 20 lets many dogs
with one fair match each outvote the one right photo (DogFaceNet: 0.535 against 0.844 for the
nearest photo), while with many photos an individual a vote can beat a single look-alike. So the
rule is a candidate chosen on val, and every rule returns the same shape: a non-negative mass
(Q, C) whose normalised rows are the class posterior and whose arg-max is the answer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np

from retrieval.errors import InputError, stored

RULES = ("nearest", "mean", "nearest_mean", "vote_exp", "vote_inv")
POSTERIOR_TEMPERATURE = 1 / 30  # exp(cosine / T) for the score rules: as sharp as an ArcFace
# softmax at s=30; it shapes the posterior shares, never which class wins
REBUILD = "rebuild the gallery with --rebuild_gallery to choose it again on val"
INVERSE_EPS = 1e-6  # 1/d guard for an exact duplicate (d = 0)


class QueryEvidence(NamedTuple):
    """What one search says about each query, read by every rule.

    hit_scores: (Q, k) float32 cosine of the k nearest gallery photos, descending per row.
    hit_labels: (Q, k) int64 class of each hit, -1 where there is none.
    class_sizes: (C,) int64 live gallery photos per class (0 for a removed class).
    mean_scores: (Q, C) float32 cosine to each class's normalised mean embedding (-inf for a
    class without photos), or None when the rule needs no class means.
    """

    hit_scores: np.ndarray
    hit_labels: np.ndarray
    class_sizes: np.ndarray
    mean_scores: np.ndarray | None = None

    @property
    def n_classes(self) -> int:
        return int(self.class_sizes.shape[0])


@dataclass(frozen=True)
class Rule:
    """One decision rule and its parameters.

    nearest: each class scores its best-matching photo (per-class max cosine).
    mean: cosine to the class mean. nearest_mean: the sum of the two.
    vote_exp: sum of exp(cos / temperature) over the top ``top_n`` hits, per class.
    vote_inv: sum of 1 / d^power over the top ``top_n`` hits (d = L2 between unit vectors);
    top_n=20, power=1 is the seed design's vote.
    """

    name: str
    top_n: int = 0
    temperature: float = POSTERIOR_TEMPERATURE
    power: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in RULES:
            raise InputError(f"unknown decision rule {self.name!r}; choose one of {RULES}")
        if self.name.startswith("vote") and self.top_n < 1:
            raise InputError(f"rule {self.name} needs top_n >= 1, got {self.top_n}")
        if not (self.temperature > 0 and self.power > 0):
            raise InputError(
                f"temperature and power must be > 0, got {self.temperature}, {self.power}"
            )

    @property
    def needs_means(self) -> bool:
        return self.name in ("mean", "nearest_mean")

    def describe(self) -> str:
        """Short readable name, e.g. ``vote_exp(top 10, T=0.05)``."""
        if self.name == "vote_exp":
            return f"vote_exp(top {self.top_n}, T={self.temperature:g})"
        if self.name == "vote_inv":
            return f"vote_inv(top {self.top_n}, 1/d^{self.power:g})"
        return self.name

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Rule:
        with stored("decision rule", REBUILD):
            return cls(
                name=str(data["name"]),
                top_n=int(data["top_n"]),
                temperature=float(data["temperature"]),
                power=float(data["power"]),
            )


def per_class_best(evidence: QueryEvidence) -> np.ndarray:
    """(Q, C) float64: each class's best hit cosine, -inf for classes not among the hits."""
    scores, labels = evidence.hit_scores, evidence.hit_labels
    best = np.full((scores.shape[0], evidence.n_classes), -np.inf)
    rows, cols = np.nonzero(labels >= 0)
    np.maximum.at(best, (rows, labels[rows, cols]), scores[rows, cols].astype(np.float64))
    return best


def _softmax_mass(values: np.ndarray, temperature: float) -> np.ndarray:
    """exp((v - row max) / T), 0 where v is -inf; a row of all -inf stays 0."""
    top = values.max(axis=1, keepdims=True, initial=-np.inf)
    shifted = np.where(np.isfinite(values), values - np.where(np.isfinite(top), top, 0.0), -np.inf)
    return np.exp(shifted / temperature)


def _vote_mass(evidence: QueryEvidence, weights: np.ndarray, top_n: int) -> np.ndarray:
    labels = evidence.hit_labels[:, :top_n]
    weights = np.where(labels >= 0, weights[:, :top_n], 0.0)
    mass = np.zeros((labels.shape[0], evidence.n_classes))
    rows, cols = np.nonzero(labels >= 0)
    np.add.at(mass, (rows, labels[rows, cols]), weights[rows, cols])
    return mass


def class_mass(rule: Rule, evidence: QueryEvidence) -> np.ndarray:
    """Non-negative mass (Q, C) float64 per class under ``rule``; all-zero rows: no hits."""
    scores = evidence.hit_scores.astype(np.float64)
    if rule.needs_means and evidence.mean_scores is None:
        raise InputError(f"rule {rule.name} needs class means; build the evidence with them")
    if rule.name == "nearest":
        return _softmax_mass(per_class_best(evidence), rule.temperature)
    if rule.name == "mean":
        means = np.where(evidence.class_sizes > 0, evidence.mean_scores, -np.inf)
        mass = _softmax_mass(means.astype(np.float64), rule.temperature)
        return np.where((evidence.hit_labels >= 0).any(axis=1, keepdims=True), mass, 0.0)
    if rule.name == "nearest_mean":
        best = per_class_best(evidence)
        found = evidence.hit_labels >= 0
        # a class beyond the hits has its best photo at most as close as the last hit
        last = np.where(found, scores, np.inf).min(axis=1, keepdims=True, initial=np.inf)
        best = np.where(np.isfinite(best), best, np.where(np.isfinite(last), last, -np.inf))
        total = np.where(evidence.class_sizes > 0, best + evidence.mean_scores, -np.inf)
        mass = _softmax_mass(total, rule.temperature)
        return np.where(found.any(axis=1, keepdims=True), mass, 0.0)
    if rule.name == "vote_exp":
        return _vote_mass(evidence, np.exp((scores - scores[:, :1]) / rule.temperature), rule.top_n)
    distances = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * scores))
    return _vote_mass(evidence, np.maximum(distances, INVERSE_EPS) ** -rule.power, rule.top_n)


def class_posterior(rule: Rule, evidence: QueryEvidence) -> np.ndarray:
    """(Q, C) float64 rows summing to 1 (0 for a query with no hit): the mass, normalised."""
    mass = class_mass(rule, evidence)
    total = mass.sum(axis=1, keepdims=True)
    return np.divide(mass, total, out=np.zeros_like(mass), where=total > 0)
