"""Per-epoch CSV log beside the checkpoints (SPEC 3.9); appended across resumes."""

from __future__ import annotations

import csv
from pathlib import Path

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
