"""Per-epoch logs (SPEC 3.9): the CSV beside the checkpoints, appended across resumes, and
the console line."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from retrieval.metrics import RetrievalMetrics
    from retrieval.training.loop import EpochStats

COLUMNS = (
    "epoch",
    "phase",
    "margin_rad",
    "loss",
    "val_recall_at_1",
    "val_recall_at_5",
    "val_map",
    "lr",
    "images_per_s",
    "epoch_time_s",
)


def append_epoch_row(path: Path, row: dict[str, object]) -> None:
    """Append one row, writing the header first when the file is new."""
    missing = set(COLUMNS) - set(row)
    assert not missing, f"epoch row lacks {missing}"
    new = not path.exists() or path.stat().st_size == 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow({key: _fmt(row[key]) for key in COLUMNS})


def _fmt(value: object) -> object:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def epoch_line(epoch: int, phase: int, stats: EpochStats, metrics: RetrievalMetrics | None) -> str:
    """The console line of one finished epoch (0-based ``epoch``), beside its CSV row."""
    val = "no val split"
    if metrics is not None:
        val = (
            f"val R@1 {metrics.recall_at_1:.4f} R@5 {metrics.recall_at_5:.4f} mAP {metrics.map:.4f}"
        )
    return (
        f"epoch {epoch + 1} (phase {phase}): loss {stats.loss:.4f}, {val}, "
        f"lr {stats.lr:.2e}, {stats.images_per_s:.1f} img/s"
    )
