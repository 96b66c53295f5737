"""The real data sets of the ablation benchmark, and the records one cell is scored on.

``dogs_kaggle`` is used as shipped (its ``train.csv``; the test split of each seed is the
held-out set). ``dogfacenet`` is cut down to a CPU-sized, seeded subset written as a manifest:
``DOGFACENET_CLASSES`` dogs to train, validate and test on, and ``OPEN_SET_CLASSES`` further
dogs whose photos are never trained on (the open-set check). ``classes=ALL_CLASSES`` is the
whole data set as a user would train on it: every dog not held out, also those with 2-4 photos
(the splitter keeps their first photo in train and gives the rest to val or test).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.data.prepare import PreparedData, prepare_data
from retrieval.data.records import ImageRecord

DOGFACENET_CLASSES = 60  # dogs with at least MIN_PHOTOS photos, for train/val/test
OPEN_SET_CLASSES = 60  # further dogs, held out of training entirely
MIN_PHOTOS = 5  # photos per dog, so that each split of a dog has one
SUBSET_SEED = 0  # the subset is the same for every training seed
ALL_CLASSES = 0  # --classes 0: every dog but the held-out ones
DEFAULTS = (DOGFACENET_CLASSES, OPEN_SET_CLASSES)  # CPU-sized; a GPU run can take 1000+ dogs


@dataclass(frozen=True)
class Dataset:
    name: str
    manifest: Path  # filename,label CSV given to train.py --data
    image_root: Path
    mode: str  # "pairs": Kaggle test-vs-test pairs; "gallery": queries against the train split
    held_out: tuple[ImageRecord, ...] = ()  # photos of individuals never trained on


@dataclass(frozen=True)
class CellRecords:
    prepared: PreparedData
    held_out: tuple[ImageRecord, ...]


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise SystemExit(f"{what} not found at {path}; pass --data_root (see ../shared/data)")
    return path


def dogs_kaggle(data_root: Path, out: Path, **_: int) -> Dataset:
    root = _require(data_root / "dogs_kaggle", "dogs_kaggle")
    manifest = _require(root / "train.csv", "train.csv")
    return Dataset("dogs_kaggle", manifest, root / "train", "pairs")


def dogfacenet(
    data_root: Path,
    out: Path,
    *,
    classes: int = DOGFACENET_CLASSES,
    open_classes: int = OPEN_SET_CLASSES,
) -> Dataset:
    """Write the subset's manifest under ``out/dogfacenet-{classes}-{open_classes}``.

    Held-out dogs have ``MIN_PHOTOS``+ photos, as do the ``classes`` trained ones; with
    ``classes=ALL_CLASSES`` the held-out dogs are the last ``open_classes`` of the same seeded
    order and every other dog is trained on, whatever its number of photos.
    """
    root = _require(data_root / "dogfacenet", "dogfacenet")
    photos = {d.name: sorted(p.name for p in d.iterdir()) for d in sorted(root.iterdir())}
    eligible = sorted(name for name, files in photos.items() if len(files) >= MIN_PHOTOS)
    chosen = np.random.default_rng(SUBSET_SEED).permutation(eligible)
    need = (classes or 1) + open_classes
    if len(chosen) < need:
        raise SystemExit(f"dogfacenet: {len(chosen)} dogs with {MIN_PHOTOS}+ photos, need {need}")
    if classes == ALL_CLASSES:
        open_set = chosen[len(chosen) - open_classes :]
        closed = sorted(set(photos) - set(open_set))
    else:
        closed, open_set = chosen[:classes], chosen[classes:need]
    name = (
        "dogfacenet"
        if (classes, open_classes) == DEFAULTS
        else f"dogfacenet-{classes or 'all'}-{open_classes}"
    )
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "label"])
        for dog in sorted(closed):
            writer.writerows([f"{dog}/{name}", dog] for name in photos[dog])
    held_out = tuple(
        ImageRecord(path=(root / dog / name).resolve(), label=dog, group=f"{dog}/{name}")
        for dog in sorted(open_set)
        for name in photos[dog]
    )
    return Dataset(name, manifest, root, "gallery", held_out)


DATASETS = {"dogs_kaggle": dogs_kaggle, "dogfacenet": dogfacenet}


def dataset_records(data: Dataset, workdir: Path, *, seed: int) -> CellRecords:
    """The cell's split (written on first use with the cell's seed, as ``train.py`` does)."""
    prepared = prepare_data(
        data.manifest, workdir, image_root=data.image_root, seed=seed, progress=False
    )
    return CellRecords(prepared, data.held_out)
