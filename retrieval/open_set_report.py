"""How an open-set calibration does on a scored query set: AUROC, false accepts, ECE.

Kept apart from :mod:`retrieval.open_set` (which fits the calibration) so each stays small.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from retrieval.open_set import (
    OpenSetCalibration,
    OpenSetScores,
    expected_calibration_error,
    roc_auc,
)


@dataclass(frozen=True)
class OpenSetReport:
    """How a calibration does on a scored query set (the calibration split or, honestly, another).

    auroc: the better of auroc_top1_cosine and auroc_vote_confidence (named by score_name);
    threshold is on the top-1 cosine whichever wins. accuracy_on_accepted_known is NaN when no
    known query is accepted. ece_before / ece_after are on these queries (in-sample on the
    calibration split; see OpenSetCalibration.ece_after for the cross-fitted value there).
    """

    auroc: float
    score_name: str
    auroc_top1_cosine: float
    auroc_vote_confidence: float
    threshold: float
    threshold_distance: float
    target_false_accept_rate: float
    false_accept_rate: float
    known_accept_rate: float
    accuracy_on_accepted_known: float
    ece_before: float
    ece_after: float
    calibration_note: str
    n_known: int
    n_unknown: int

    def to_dict(self) -> dict:
        """JSON-ready; NaN becomes None."""
        items = asdict(self).items()
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in items}


def open_set_report(scores: OpenSetScores, calibration: OpenSetCalibration) -> OpenSetReport:
    """Apply ``calibration`` to ``scores`` and measure it."""
    unknown = scores.is_unknown
    known = ~unknown
    auroc_cos = roc_auc(scores.top1_scores[known], scores.top1_scores[unknown])
    auroc_vote = roc_auc(scores.vote_confidence[known], scores.vote_confidence[unknown])
    accepted = calibration.accepts(scores.top1_scores)
    correct_accepted = scores.top1_correct[known & accepted]
    is_same = scores.top1_correct & known
    return OpenSetReport(
        auroc=max(auroc_cos, auroc_vote),
        score_name="top1_cosine" if auroc_cos >= auroc_vote else "vote_confidence",
        auroc_top1_cosine=auroc_cos,
        auroc_vote_confidence=auroc_vote,
        threshold=calibration.threshold_score,
        threshold_distance=calibration.threshold_distance,
        target_false_accept_rate=calibration.target_false_accept_rate,
        false_accept_rate=float(accepted[unknown].mean()),
        known_accept_rate=float(accepted[known].mean()),
        accuracy_on_accepted_known=(
            float(correct_accepted.mean()) if correct_accepted.size else math.nan
        ),
        ece_before=expected_calibration_error(np.clip(scores.top1_scores, 0.0, 1.0), is_same),
        ece_after=expected_calibration_error(calibration.probability(scores.top1_scores), is_same),
        calibration_note=calibration.note,
        n_known=int(known.sum()),
        n_unknown=int(unknown.sum()),
    )


def format_open_set_report(report: OpenSetReport) -> str:
    """A readable block for the console."""
    r = report
    return "\n".join(
        [
            f"open set: {r.n_known} known, {r.n_unknown} unknown queries "
            "(unknown = no gallery image of their individual)",
            f"  AUROC known vs unknown: {r.auroc_top1_cosine:.4f} by top-1 cosine, "
            f"{r.auroc_vote_confidence:.4f} by vote confidence (better: {r.score_name})",
            f"  accept when top-1 cosine > {r.threshold:.4f} (L2 < {r.threshold_distance:.4f}); "
            f"target false-accept rate {r.target_false_accept_rate:.3f}",
            f"  false-accept rate {r.false_accept_rate:.4f}   known accepted "
            f"{r.known_accept_rate:.4f}   accuracy on accepted known "
            f"{r.accuracy_on_accepted_known:.4f}",
            f"  P(same individual): {r.calibration_note}; ECE {r.ece_before:.4f} raw cosine -> "
            f"{r.ece_after:.4f} calibrated",
        ]
    )
