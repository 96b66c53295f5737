"""Per-epoch logs (SPEC 3.9): the CSV beside the checkpoints, appended across resumes, and
the console lines."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

from retrieval.io import atomic_path

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


def trim_epoch_log(path: Path, epochs_done: int) -> int:
    """Drop the rows of epochs after ``epochs_done`` (1-based numbers above it); returns how many.

    An interrupt after an epoch's row but before its checkpoint makes the next run redo that
    epoch: trimming first keeps one row per epoch however often a run is interrupted.
    """
    if not path.is_file():
        return 0
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    kept = [row for row in rows if int(row["epoch"]) <= epochs_done]
    if len(kept) < len(rows):
        with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(kept)
    return len(rows) - len(kept)


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


def interrupt_line(epoch: int, done: int) -> str:
    """What an interrupt in (0-based) ``epoch`` kept: ``done`` whole epochs in latest_model.pt."""
    if done == 0:
        return f"interrupted in epoch {epoch + 1}: nothing saved; the next run starts afresh"
    epoch = max(epoch, done)  # interrupted after the save, before the next epoch began
    return f"interrupted in epoch {epoch + 1}: the run resumes from the end of epoch {done}"
