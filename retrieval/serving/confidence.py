"""A calibrated confidence: P(the decided individual is right) from the decision's evidence.

The map is fitted on the val split (:mod:`retrieval.calibration.confidence_fit`) and stored as
plain numbers, so answering needs no scikit-learn and gives exactly what was measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retrieval.errors import InputError, stored

# per query, about its decided class: best photo's cosine, posterior share, share minus the
# runner-up's, and the share of its gallery photos among the nearest (see decide.Features)
FEATURES = ("top_score", "share", "margin", "support")
METHODS = ("logistic", "isotonic", "uncalibrated")


@dataclass(frozen=True)
class Calibrator:
    """Features (Q, 4) -> P(correct) (Q,).

    logistic: sigmoid(coef . (x - center) / scale + intercept) over all FEATURES.
    isotonic: piecewise linear through (xs, ys) on one feature, flat outside (sklearn's
    ``IsotonicRegression`` with ``out_of_bounds="clip"``). uncalibrated: the posterior share as
    it is (before any val split has been seen).
    """

    method: str = "uncalibrated"
    feature: str = "share"
    xs: tuple[float, ...] = ()
    ys: tuple[float, ...] = ()
    coef: tuple[float, ...] = ()
    intercept: float = 0.0
    center: tuple[float, ...] = ()
    scale: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.method not in METHODS or self.feature not in FEATURES:
            raise InputError(f"bad calibrator {self.method!r} on feature {self.feature!r}")
        if self.method == "isotonic" and not 0 < len(self.xs) == len(self.ys):
            raise InputError(f"isotonic calibrator needs matching points, got {len(self.xs)}")
        n = len(FEATURES)
        if self.method == "logistic" and not len(self.coef) == len(self.center) == n:
            raise InputError(f"logistic calibrator needs {n} coefficients, got {len(self.coef)}")

    @property
    def calibrated(self) -> bool:
        return self.method != "uncalibrated"

    def __call__(self, features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, dtype=np.float64).reshape(-1, len(FEATURES))
        if self.method == "logistic":
            z = ((x - self.center) / self.scale) @ np.asarray(self.coef) + self.intercept
            return 0.5 * (1.0 + np.tanh(0.5 * z))  # the sigmoid, without overflow
        column = x[:, FEATURES.index(self.feature)]
        if self.method == "isotonic":
            return np.interp(column, self.xs, self.ys)
        return np.clip(column, 0.0, 1.0)

    def describe(self) -> str:
        if self.method == "logistic":
            return "logistic on " + ", ".join(FEATURES)
        return f"{self.method} on {self.feature}"

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "feature": self.feature,
            "xs": list(self.xs),
            "ys": list(self.ys),
            "coef": list(self.coef),
            "intercept": self.intercept,
            "center": list(self.center),
            "scale": list(self.scale),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Calibrator:
        with stored("confidence calibrator", "rebuild the gallery with --rebuild_gallery"):
            keys = ("xs", "ys", "coef", "center", "scale")
            return cls(
                method=str(data["method"]),
                feature=str(data["feature"]),
                intercept=float(data["intercept"]),
                **{k: tuple(float(v) for v in data[k]) for k in keys},
            )
