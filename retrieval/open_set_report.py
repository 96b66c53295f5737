"""How the new-individual check does on an open-set mix: AUROC, false accepts, and the
selective report of the decisions a user would get.

Kept apart from :mod:`retrieval.calibration.open_set` (which simulates and chooses) so each
stays small.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from retrieval.calibration.open_set import OpenSetAnswers
from retrieval.selective import roc_auc


@dataclass(frozen=True)
class OpenSetReport:
    """The check on a scored query set (the val split it was chosen on, or honestly another).

    auroc_confidence / auroc_top1_cosine: known vs unknown queries by each score.
    threshold: the confidence an answer needs (the policy's threshold with the check).
    accuracy_on_accepted_known is NaN when no known query is accepted.
    """

    auroc_confidence: float
    auroc_top1_cosine: float
    threshold: float
    target_false_accept_rate: float
    false_accept_rate: float
    known_accept_rate: float
    accuracy_on_accepted_known: float
    n_known: int
    n_unknown: int

    def to_dict(self) -> dict:
        """JSON-ready; NaN becomes None."""
        items = asdict(self).items()
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in items}


def open_set_report(
    answers: OpenSetAnswers, threshold: float, target_false_accept_rate: float
) -> OpenSetReport:
    """Apply the confidence ``threshold`` to ``answers`` and measure it."""
    unknown = answers.is_unknown
    known = ~unknown
    confidence = answers.confidence
    accepted = confidence >= threshold
    correct_accepted = answers.correct[known & accepted]
    return OpenSetReport(
        auroc_confidence=roc_auc(confidence[known], confidence[unknown]),
        auroc_top1_cosine=roc_auc(answers.top1_scores[known], answers.top1_scores[unknown]),
        threshold=float(threshold),
        target_false_accept_rate=float(target_false_accept_rate),
        false_accept_rate=float(accepted[unknown].mean()),
        known_accept_rate=float(accepted[known].mean()),
        accuracy_on_accepted_known=(
            float(correct_accepted.mean()) if correct_accepted.size else math.nan
        ),
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
            f"  AUROC known vs unknown: {r.auroc_confidence:.4f} by confidence, "
            f"{r.auroc_top1_cosine:.4f} by top-1 cosine",
            f"  accept when confidence >= {r.threshold:.4f}; target false-accept rate "
            f"{r.target_false_accept_rate:.3f}",
            f"  new individuals given a known name {r.false_accept_rate:.4f}   known accepted "
            f"{r.known_accept_rate:.4f}   accuracy on accepted known "
            f"{r.accuracy_on_accepted_known:.4f}",
        ]
    )
