"""Global and local evidence on one scale: P(same individual) for each shortlisted hit.

Why calibrate before fusing (WildFusion, Cermak et al. 2024): a cosine and an inlier count
are in different units, and how much each is worth differs by species and photo style. Each is
mapped to P(same individual) by an isotonic curve fitted on labelled val pairs, and the two
are combined by their mean or by a logistic on their logits (chosen on val,
``retrieval.calibration.fusion_fit``). Hits past the shortlist keep their global score on the
same scale, so the rules rank them alongside the re-scored ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from retrieval.errors import InputError, stored
from retrieval.local.features import FOREGROUNDS, LocalSettings
from retrieval.serving.decide import DecisionPolicy
from retrieval.serving.rules import REBUILD, QueryEvidence

MODES = ("mean", "logistic")
MAX_KEYPOINTS = 512  # per photo: half the matching time of 1024 (bench/local_bench.py)
GEOMETRY = "homography"
_EPS = 1e-4  # probabilities kept off 0 and 1 before a logit


@dataclass(frozen=True)
class Curve:
    """A monotone map from a score to P(same individual): isotonic breakpoints, linear between,
    clipped outside (sklearn ``IsotonicRegression`` ``X_thresholds_``/``y_thresholds_``)."""

    x: tuple[float, ...]
    y: tuple[float, ...]

    def __call__(self, values: np.ndarray) -> np.ndarray:
        return np.interp(np.asarray(values, np.float64), self.x, self.y)


@dataclass(frozen=True)
class Fusion:
    """How local matches re-score a query's shortlist; stored with the gallery.

    mode: the "mean" of the two calibrated probabilities, or a "logistic" on their logits
    (``weights`` = bias, global, local). shortlist: hits re-scored per query. helps: val scored
    it above global only (``--local_match auto`` uses it only then). foreground: where
    keypoints are kept on photos without alpha (``FOREGROUNDS``, chosen on val). policy: the
    decision policy chosen on val on the fused evidence. evidence: what val measured.
    """

    global_curve: Curve
    local_curve: Curve
    mode: str = "mean"
    shortlist: int = 0
    helps: bool = False
    geometry: str = GEOMETRY
    max_keypoints: int = MAX_KEYPOINTS
    foreground: str = "none"
    weights: tuple[float, ...] = ()
    policy: DecisionPolicy | None = None
    evidence: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"fusion mode {self.mode!r}: allowed {', '.join(MODES)}; {REBUILD}")
        if self.foreground not in FOREGROUNDS:
            raise InputError(
                f"fusion foreground {self.foreground!r}: allowed {', '.join(FOREGROUNDS)}; "
                f"{REBUILD}"
            )

    @property
    def settings(self) -> LocalSettings:
        """How keypoints were extracted when val fitted this fusion: queries and gallery
        photos must be extracted the same way to be scored on its curves."""
        return LocalSettings(max_keypoints=self.max_keypoints, foreground=self.foreground)

    def global_probability(self, cosines: np.ndarray) -> np.ndarray:
        return self.global_curve(cosines)

    def fuse(self, cosines: np.ndarray, inliers: np.ndarray) -> np.ndarray:
        """P(same individual) of hits with both scores: cosines and inliers (Q, B)."""
        p_global, p_local = self.global_curve(cosines), self.local_curve(inliers)
        return combine(self.mode, p_global, p_local, self.weights)

    def to_dict(self) -> dict:
        def curve(c: Curve) -> dict:
            return {"x": list(c.x), "y": list(c.y)}

        return {
            "mode": self.mode,
            "shortlist": self.shortlist,
            "helps": self.helps,
            "geometry": self.geometry,
            "max_keypoints": self.max_keypoints,
            "foreground": self.foreground,
            "global_curve": curve(self.global_curve),
            "local_curve": curve(self.local_curve),
            "weights": list(self.weights),
            "policy": None if self.policy is None else self.policy.to_dict(),
            "evidence": self.evidence,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Fusion:
        def curve(c: dict) -> Curve:
            return Curve(tuple(c["x"]), tuple(c["y"]))

        with stored("local-match fusion", REBUILD):
            policy = data.get("policy")
            return cls(
                mode=data["mode"],
                shortlist=int(data["shortlist"]),
                helps=bool(data["helps"]),
                geometry=data["geometry"],
                max_keypoints=int(data["max_keypoints"]),
                foreground=str(data.get("foreground", "none")),  # older: every keypoint
                global_curve=curve(data["global_curve"]),
                local_curve=curve(data["local_curve"]),
                weights=tuple(data["weights"]),
                policy=None if policy is None else DecisionPolicy.from_dict(policy),
                evidence=dict(data.get("evidence", {})),
            )


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def combine(
    mode: str, p_global: np.ndarray, p_local: np.ndarray, weights: tuple[float, ...] = ()
) -> np.ndarray:
    """The fused probability: the one formula fitting (on val) and serving both use."""
    if mode == "mean":
        return (p_global + p_local) / 2
    if mode == "logistic":
        bias, w_global, w_local = weights
        z = bias + w_global * logit(p_global) + w_local * logit(p_local)
        return 1 / (1 + np.exp(-z))
    raise InputError(f"fusion mode {mode!r} combines nothing; allowed: mean, logistic")


def fused_order(
    fusion: Fusion, cosines: np.ndarray, inliers: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Scores of every hit on the fused scale and the order that sorts each row by them.

    cosines: (Q, k) descending per row; inliers: (Q, B) of the first B hits (B <= k); labels
    (Q, k), -1 for no hit. Returns (scores (Q, k) float32 in the new order, order (Q, k) int64
    into the old columns).
    """
    scores = fusion.global_probability(cosines)
    b = inliers.shape[1]
    scores[:, :b] = fusion.fuse(cosines[:, :b], inliers)
    scores = np.where(labels >= 0, scores, -np.inf)  # no hit stays last
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(scores, order, axis=1).astype(np.float32), order


def fused_evidence(evidence: QueryEvidence, scores: np.ndarray, order: np.ndarray) -> QueryEvidence:
    """``evidence`` with its hits re-scored and re-ordered (``fused_order``); the class-mean
    cosines stay global."""
    labels = np.take_along_axis(evidence.hit_labels, order, axis=1)
    return QueryEvidence(scores, labels, evidence.class_sizes, evidence.mean_scores)
