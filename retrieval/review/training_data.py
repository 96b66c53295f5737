"""Corrections into the next training run: ``train.py --corrections WORKDIR``.

The photos people filed on the review page (confirmed, another individual, new individual)
join the training data, and the ones marked unusable leave it: the data is written as a CSV
manifest (``filename,label,group``, which ``--data`` reads) in ``<workdir>/review/``, and the
run trains on that. Each review photo is a group of its own and joins the *train* split of
the stored splits, so val and test stay the photos they were and the next run's figures
compare with this one's. A photo of the data that a person relabelled leaves its old group
(it was wrong about that encounter) and trains under its new name; one they only confirmed
stays where it was, in val or test too. The pairs people rejected (the answer named one
individual, they chose another) are written beside it as hard negatives,
``filename,not_label``, for a trainer that mines them; the ArcFace recipe does not read them.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path

from retrieval.data.records import ImageRecord
from retrieval.data.scan import load_records
from retrieval.data.splits import Splits, load_splits, save_splits
from retrieval.errors import InputError
from retrieval.io import atomic_path, read_json
from retrieval.review.log import hard_negatives, in_effect, log_path, read_log

MANIFEST = Path("review") / "training_manifest.csv"  # under the training workdir
NEGATIVES = Path("review") / "hard_negatives.csv"
CLASS_MAP = "class_to_idx.json"


@dataclass(frozen=True)
class TrainingExport:
    manifest: Path
    hard_negatives: Path
    added: int  # review photos that were not in the data
    relabelled: int  # photos of the data filed under another individual
    dropped: int  # photos of the data marked unusable
    joined_train: int  # review groups added to the stored train split

    def describe(self) -> str:
        return (
            f"corrections: training on {self.manifest} (the data with {self.added} reviewed "
            f"photo(s) added, {self.relabelled} relabelled, {self.dropped} unusable left out; "
            f"{self.joined_train} joined the stored train split); hard negatives in "
            f"{self.hard_negatives}"
        )


def reviewed_labels(entries: list[dict]) -> dict[str, str | None]:
    """Photo (resolved path) -> the individual a person filed it under; None: unusable."""
    return {str(Path(e["photo"]).resolve()): e["after"] for e in in_effect(entries).values()}


def review_group(photo: str) -> str:
    return f"review-{Path(photo).stem[:24]}"


def merge_records(
    records: list[ImageRecord], labels: dict[str, str | None]
) -> tuple[list[ImageRecord], int, int, int]:
    """The data as the review left it: (records, added, relabelled, dropped)."""
    pending = dict(labels)
    merged, relabelled, dropped = [], 0, 0
    for record in records:
        key = str(record.path.resolve())
        if key not in pending:
            merged.append(record)
            continue
        label = pending.pop(key)
        if label is None:
            dropped += 1
        elif label == record.label:
            merged.append(record)
        else:
            merged.append(replace(record, label=label, group=review_group(key)))
            relabelled += 1
    added = [
        ImageRecord(path=Path(photo), label=label, group=review_group(photo))
        for photo, label in sorted(pending.items())
        if label is not None and Path(photo).is_file()
    ]
    return merged + added, len(added), relabelled, dropped


def training_manifest(
    reviewed: Path, *, data: Path, image_root: Path | None, workdir: Path
) -> TrainingExport:
    """Write the manifest (and hard negatives) that ``train.py --corrections`` trains on.

    ``reviewed``: the workdir the review page ran on; ``workdir``: the run's, which starts
    over (``train.py`` refuses to resume a run on changed data).
    """
    entries = read_log(reviewed)
    if not entries:
        raise InputError(
            f"--corrections {reviewed}: no review log at {log_path(reviewed)}; review answers "
            f"first with search.py --serve --workdir {reviewed}"
        )
    records = load_records(Path(data), image_root)
    merged, added, relabelled, dropped = merge_records(records, reviewed_labels(entries))
    _forget_class_map(Path(workdir), {r.label for r in merged})
    manifest = Path(workdir) / MANIFEST
    with atomic_path(manifest) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "label", "group"])
        writer.writerows([str(r.path), r.label, r.group] for r in merged)
    negatives = Path(workdir) / NEGATIVES
    with atomic_path(negatives) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "not_label"])
        writer.writerows(hard_negatives(entries))
    new_groups = {r.group for r in merged} - {r.group for r in records}
    joined = join_train_split(Path(workdir) / "splits", new_groups)
    return TrainingExport(manifest, negatives, added, relabelled, dropped, joined)


def join_train_split(splits_dir: Path, groups: set[str]) -> int:
    """Add ``groups`` that are in no stored split to the train split; returns how many."""
    splits = load_splits(splits_dir)
    new = sorted(groups - splits.all_groups()) if splits is not None else []
    if not new:
        return 0
    meta = read_json(splits_dir / "split_meta.json")
    meta = {k: v for k, v in meta.items() if k not in ("created", "counts")}
    train = tuple(sorted((*splits.train, *new)))
    save_splits(Splits(train=train, val=splits.val, test=splits.test), splits_dir, meta=meta)
    return len(new)


def _forget_class_map(workdir: Path, labels: set[str]) -> None:
    """New individuals change the class map: the run, which starts over, writes it afresh
    (the previous run's checkpoints keep their own copy)."""
    path = workdir / CLASS_MAP
    if path.is_file() and labels - set(read_json(path)):
        path.unlink()
