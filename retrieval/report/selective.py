"""How good the answers are when the product may decline: the selective-prediction report
(risk-coverage curve, AURC, ECE, coverage at fixed accuracies) with its CSV and two PNGs.

Written for the test split by ``evaluate.py`` and for the open-set mix by ``--open_set``, from
the decisions the product actually makes (``retrieval.serving.decide``).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from retrieval.io import atomic_path
from retrieval.report.png import save_png
from retrieval.selective import (
    ECE_BINS,
    aurc,
    coverage_at_accuracy,
    expected_calibration_error,
    reliability_bins,
    risk_coverage,
)
from retrieval.serving.decide import Decision, DecisionPolicy

ACCURACY_LEVELS = (0.90, 0.95, 0.99)


@dataclass(frozen=True)
class SelectiveReport:
    """Decisions against the truth. coverage_at_target / accuracy_on_accepted: what the stored
    threshold did (accuracy NaN when nothing was accepted); coverage_at_accuracy: the best any
    threshold could do on these queries (an upper bound, read off the curve)."""

    rule: str
    n_queries: int
    accuracy_at_full_coverage: float
    target_accuracy: float
    coverage_at_target: float
    accuracy_on_accepted: float
    aurc: float
    ece: float
    coverage_at_accuracy: dict[str, float]

    def decision_dict(self) -> dict:
        """The ``decision`` block of ``{split}_metrics.json``: exactly these keys."""
        keys = ("rule", "accuracy_at_full_coverage", "target_accuracy", "coverage_at_target")
        keys += ("accuracy_on_accepted", "aurc", "ece")
        return {k: _json_number(getattr(self, k)) for k in keys}


def _json_number(value):
    return None if isinstance(value, float) and math.isnan(value) else value


def outcomes(decisions: Sequence[Decision], truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """confidence (Q,) float64 and correct (Q,) bool: the winner is the true class (a query
    whose class the gallery lacks is never correct)."""
    confidence = np.array([d.confidence for d in decisions], dtype=np.float64)
    predicted = np.array([d.predicted for d in decisions], dtype=np.int64)
    return confidence, predicted == np.asarray(truth)


def selective_report(
    decisions: Sequence[Decision], truth: np.ndarray, policy: DecisionPolicy
) -> SelectiveReport:
    confidence, correct = outcomes(decisions, truth)
    accepted = np.array([d.accepted for d in decisions], dtype=bool)
    return SelectiveReport(
        rule=policy.rule.describe(),
        n_queries=int(correct.size),
        accuracy_at_full_coverage=float(correct.mean()),
        target_accuracy=policy.target_accuracy,
        coverage_at_target=float(accepted.mean()),
        accuracy_on_accepted=float(correct[accepted].mean()) if accepted.any() else math.nan,
        aurc=aurc(confidence, correct),
        ece=expected_calibration_error(confidence, correct),
        coverage_at_accuracy={
            f"{level:.2f}": coverage_at_accuracy(confidence, correct, level)
            for level in ACCURACY_LEVELS
        },
    )


def format_selective(report: SelectiveReport, policy: DecisionPolicy) -> str:
    r = report
    at = "  ".join(f"{k}: {v:.3f}" for k, v in r.coverage_at_accuracy.items())
    return "\n".join(
        [
            f"  decision ({r.rule}): accuracy {r.accuracy_at_full_coverage:.4f} answering all; "
            f"threshold {policy.threshold:.3f} accepts {r.coverage_at_target:.1%} at accuracy "
            f"{r.accuracy_on_accepted:.4f} (target {r.target_accuracy:.2f})",
            f"    AURC {r.aurc:.4f}   ECE {r.ece:.4f}   best coverage at accuracy {at}",
        ]
    )


def write_selective(
    confidence: np.ndarray, correct: np.ndarray, results: Path, figures: Path | None, name: str
) -> list[Path]:
    """``{name}_risk_coverage.csv`` under results and, with ``figures``, the risk-coverage
    curve and the reliability diagram as PNGs."""
    curve = risk_coverage(confidence, correct)
    csv_path = results / f"{name}_risk_coverage.csv"
    with atomic_path(csv_path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["coverage", "accuracy", "risk", "min_confidence"])
        for c, a, t in zip(curve.coverage, curve.accuracy, curve.threshold, strict=True):
            writer.writerow([f"{c:.6f}", f"{a:.6f}", f"{1 - a:.6f}", f"{t:.6f}"])
    files = [csv_path]
    if figures is not None:
        files += [
            _risk_coverage_png(curve, figures / f"{name}_risk_coverage.png", name),
            _reliability_png(confidence, correct, figures / f"{name}_reliability.png", name),
        ]
    return files


def _risk_coverage_png(curve, path: Path, name: str) -> Path:
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    ax.step(curve.coverage, 1 - curve.accuracy, where="post", color="tab:blue")
    ax.set_xlabel("coverage (share of photos answered)")
    ax.set_ylabel("risk (share of answers wrong)")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.set_title(f"{name}: risk-coverage")
    ax.grid(alpha=0.3)
    return save_png(fig, path)


def _reliability_png(confidence, correct, path: Path, name: str) -> Path:
    bins, count = reliability_bins(confidence, ECE_BINS)
    right = np.bincount(bins, weights=correct.astype(np.float64), minlength=ECE_BINS)
    mean_conf = np.bincount(bins, weights=confidence, minlength=ECE_BINS)
    used = count > 0
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    ax.plot(mean_conf[used] / count[used], right[used] / count[used], "o-", label="answers")
    ax.set_xlabel("confidence")
    ax.set_ylabel("share correct")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"{name}: reliability ({ECE_BINS} bins)")
    ax.legend(loc="upper left")
    return save_png(fig, path)
