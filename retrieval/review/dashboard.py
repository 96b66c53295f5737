"""How the model is doing: the figures ``evaluate.py`` wrote for the current model, and how
often people confirmed or corrected its answers, day by day (from the corrections log).

Only what ``evaluate.py`` writes is read (``results/{split}_metrics.json`` and a fixed list of
figure names under ``results/figures/``), so the page never serves another file of the workdir.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from retrieval.errors import InputError
from retrieval.io import read_json
from retrieval.review.log import OUTCOMES, in_effect, outcome

SPLITS = ("test", "val")
FIGURES = (  # evaluate.py's names after "{split}_"
    "risk_coverage",
    "reliability",
    "per_class_ap",
    "confusion_pairs",
    "retrieval_grid",
    "embedding_map",
)
METRICS = (
    ("recall_at_1", "Recall@1"),
    ("recall_at_5", "Recall@5"),
    ("map", "mAP"),
    ("identity_balanced_map", "identity-balanced mAP"),
)
DECISION = (
    ("accuracy_at_full_coverage", "accuracy answering all"),
    ("coverage_at_target", "answered at the target accuracy"),
    ("accuracy_on_accepted", "accuracy of the answered"),
    ("ece", "calibration error (ECE)"),
)


@dataclass(frozen=True)
class SplitReport:
    """One split's evaluation: figures named ``(label, value)`` and the PNGs found."""

    split: str
    checkpoint: str
    n_queries: int
    figures: tuple[tuple[str, float], ...]
    images: tuple[str, ...]  # file names under results/figures


@dataclass(frozen=True)
class ReviewDay:
    day: str  # YYYY-MM-DD
    counts: dict[str, int]  # outcome -> actions in effect that day

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def share(self, what: str) -> float:
        return self.counts.get(what, 0) / self.total if self.total else 0.0


def model_reports(workdir: Path) -> list[SplitReport]:
    """The evaluations of the splits ``evaluate.py`` has scored (test first); [] if none."""
    results = Path(workdir) / "results"
    reports = []
    for split in SPLITS:
        try:
            metrics = read_json(results / f"{split}_metrics.json")
        except (FileNotFoundError, InputError):
            continue
        decision = metrics.get("decision") or {}
        shown = [(label, metrics.get(key)) for key, label in METRICS]
        shown += [(label, decision.get(key)) for key, label in DECISION]
        images = [f"{split}_{name}.png" for name in FIGURES]
        reports.append(
            SplitReport(
                split=split,
                checkpoint=str(metrics.get("checkpoint", "")),
                n_queries=int(metrics.get("n_queries", 0)),
                figures=tuple((label, v) for label, v in shown if isinstance(v, int | float)),
                images=tuple(n for n in images if (results / "figures" / n).is_file()),
            )
        )
    return reports


def figure_path(workdir: Path, name: str) -> Path | None:
    """The PNG ``name`` under results/figures when it is one evaluate.py writes, else None."""
    allowed = {f"{split}_{figure}.png" for split in SPLITS for figure in FIGURES}
    path = Path(workdir) / "results" / "figures" / name
    return path if name in allowed and path.is_file() else None


def review_days(entries: list[dict]) -> list[ReviewDay]:
    """Each reviewed answer once, by its action in effect (an undone one drops out), counted
    on the day of that action, oldest first."""
    days: dict[str, Counter] = {}
    for entry in in_effect(entries).values():
        days.setdefault(entry["time"][:10], Counter())[outcome(entry)] += 1
    return [
        ReviewDay(day, {what: counts.get(what, 0) for what in OUTCOMES})
        for day, counts in sorted(days.items())
    ]
