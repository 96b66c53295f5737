"""The record every stage of the data layer passes along: one image, its class, its group."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True, order=True)
class ImageRecord:
    """One labelled image.

    ``group`` is the ID of the object photographed (SPEC 1.1): images sharing it are other
    angles or burst shots of one animal, so they must never be split across train/val/test.
    """

    path: Path  # absolute path to the image file
    label: str  # class name (folder name or manifest label)
    group: str  # group ID, unique across the whole data set


def labels_of(records: Sequence[ImageRecord], class_to_idx: dict[str, int]) -> np.ndarray:
    """(N,) int64 class indices of ``records`` (every label must be in ``class_to_idx``)."""
    return np.array([class_to_idx[r.label] for r in records], dtype=np.int64)
