"""From a data path to train/val/test records, in the same way on every run (SPEC 1).

One function chains the data stages (scan -> image check -> split -> class map) and owns the
files they leave in the workdir: ``cache/image_check.json``, ``splits/`` and
``class_to_idx.json``. Splits and the class map are written once and then only read: when the
data changes, the change is reported, never silently re-split (SPEC 1.3).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from retrieval.data.images import ImageCheck, check_images
from retrieval.data.records import ImageRecord
from retrieval.data.scan import load_records
from retrieval.data.splits import (
    DEFAULT_RATIOS,
    SplitDrift,
    SplitReport,
    Splits,
    build_split_report,
    compare_to_data,
    format_report,
    load_splits,
    save_splits,
    split_groups,
)
from retrieval.errors import InputError
from retrieval.io import read_json, write_json_atomic

_MAX_LINES = 20  # listed exclusions / unreadable files before "... and N more"


@dataclass(frozen=True)
class PreparedData:
    """Records per split, the class map, and everything the run log should say about them."""

    train: list[ImageRecord]
    val: list[ImageRecord]
    test: list[ImageRecord]
    class_to_idx: dict[str, int]
    report: SplitReport
    drift: SplitDrift
    check: ImageCheck
    splits_created: bool = False  # True when this call wrote splits/ (first run)
    notes: tuple[str, ...] = ()  # warnings for the log (e.g. --seed differs from the stored one)


def _ensure_workdir(workdir: Path) -> Path:
    workdir = Path(workdir).expanduser().absolute()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=workdir):
            pass
    except OSError as e:
        raise InputError(
            f"--workdir {workdir} is not a writable folder ({e.strerror or e}); "
            "pass a folder you can write to"
        ) from None
    return workdir


def _nothing_left(
    source: Path, records: list[ImageRecord], check: ImageCheck, min_size: int
) -> str:
    """Why the image policy left no image, and which flag fixes it."""
    n_groups = len({r.group for r in records})
    if check.too_small:
        w, h = min(check.sizes.values(), key=min)
        keep_all = min(min(s) for s in check.sizes.values())
        unreadable = f"; {len(check.unreadable)} file(s) unreadable" if check.unreadable else ""
        return (
            f"no images left in {source}: all {len(check.too_small)} of {n_groups} groups were "
            f"excluded as too small (an image's shorter side is below --min_size {min_size}; "
            f"smallest image seen {w}x{h}){unreadable}; lower the minimum, e.g. "
            f"--min_size {keep_all} (with a --image_size to match), or use larger images"
        )
    path, reason = next(iter(check.unreadable.items()))
    return (
        f"none of the {len(records)} images in {source} could be read (e.g. {path}: {reason}); "
        "check that --data points at the images and that they are valid image files"
    )


def _class_map(records: list[ImageRecord], path: Path) -> dict[str, int]:
    """Sorted class names -> 0..N-1; written the first time, checked against the data after."""
    wanted = {name: i for i, name in enumerate(sorted({r.label for r in records}))}
    fix = f"delete {path} and the splits/ folder beside it to start over, or use the original data"
    try:
        stored = read_json(path, fix=fix)
    except FileNotFoundError:
        write_json_atomic(path, wanted)
        return wanted
    valid = isinstance(stored, dict) and sorted(stored.values()) == list(range(len(stored)))
    if not valid:
        raise InputError(f"{path} must map class names to 0..N-1; {fix}")
    if stored != wanted:
        new = sorted(set(wanted) - set(stored))
        gone = sorted(set(stored) - set(wanted))
        what = [f"{len(new)} new class(es) e.g. {new[:3]}"] if new else []
        what += [f"{len(gone)} class(es) no longer present e.g. {gone[:3]}"] if gone else []
        raise InputError(
            f"the classes in the data no longer match {path} ({'; '.join(what) or 'order'}); "
            f"a trained model's outputs follow that file: {fix}"
        )
    return stored


def _load_or_split(
    kept: list[ImageRecord], splits_dir: Path, *, seed: int, meta: dict, seed_change: str
) -> tuple[Splits, SplitDrift, bool, tuple[str, ...]]:
    """Stored splits compared with the data, or a fresh split saved for next time.

    ``seed_change`` says what a ``seed`` other than the stored splits' does: "note" (the
    stored splits are used and a note says so), "refuse" (an explicit ``--seed``: the user
    expects the split it makes), or "resplit" (split again with ``seed``, whatever the stored
    splits: new groups of the data join them too).
    """
    splits = load_splits(splits_dir)
    stored_seed = _stored_seed(splits_dir) if splits is not None else None
    if splits is None or seed_change == "resplit":
        splits = split_groups(kept, seed=seed, ratios=DEFAULT_RATIOS)
        save_splits(splits, splits_dir, meta=meta)
        return splits, SplitDrift((), ()), True, ()
    drift = compare_to_data(splits, {r.group for r in kept})
    notes: tuple[str, ...] = ()
    if stored_seed is not None and stored_seed != seed:
        if seed_change == "refuse":
            raise InputError(
                f"--seed {seed} differs from seed {stored_seed}, which made the stored splits in "
                f"{splits_dir}; add --resplit to split the data again with seed {seed} (with "
                f"--fresh when a run exists), or give --seed {stored_seed} to keep them"
            )
        notes = (
            f"--seed {seed} ignored for splitting: {splits_dir} was made with seed "
            f"{stored_seed}; train.py --fresh --resplit splits again",
        )
    return splits, drift, False, notes


def _stored_seed(splits_dir: Path) -> int | None:
    try:
        return read_json(splits_dir / "split_meta.json").get("seed")
    except (FileNotFoundError, InputError, AttributeError):
        return None


def prepare_data(
    source: Path,
    workdir: Path,
    *,
    image_root: Path | None = None,
    min_size: int = 224,
    seed: int = 42,
    num_workers: int = 1,
    progress: bool = True,
    seed_change: str = "note",
) -> PreparedData:
    """Scan ``source``, apply the image policy, split once (``workdir/splits``), map classes.

    ``seed_change``: what a ``seed`` other than the stored splits' does (``_load_or_split``).

    Raises ``InputError`` for a bad data path or layout, an unwritable workdir, a data set
    that the image policy empties, or a class map that no longer matches the data.
    """
    workdir = _ensure_workdir(workdir)
    records = load_records(source, image_root)
    check = check_images(
        records,
        min_size=min_size,
        cache_path=workdir / "cache" / "image_check.json",
        num_workers=num_workers,
        progress=progress,
    )
    if not check.kept:
        raise InputError(_nothing_left(Path(source), records, check, min_size))
    class_to_idx = _class_map(check.kept, workdir / "class_to_idx.json")
    meta = {
        "seed": seed,
        "ratios": list(DEFAULT_RATIOS),
        "source": str(Path(source).expanduser().absolute()),
        "image_root": str(image_root) if image_root is not None else None,
        "min_size": min_size,
    }
    splits_dir = workdir / "splits"
    splits, drift, created, notes = _load_or_split(
        check.kept, splits_dir, seed=seed, meta=meta, seed_change=seed_change
    )
    parts = {}
    for name in ("train", "val", "test"):
        ids = set(splits.of(name))
        parts[name] = [r for r in check.kept if r.group in ids]
    if not parts["train"]:
        raise InputError(
            f"the stored splits in {splits_dir} match no image of the data in {source}; "
            "delete that folder to re-split, or point --data at the original data"
        )
    report = build_split_report(
        check.kept,
        splits,
        n_excluded_groups=len(check.too_small),
        n_unreadable_files=len(check.unreadable),
    )
    return PreparedData(
        **parts,
        class_to_idx=class_to_idx,
        report=report,
        drift=drift,
        check=check,
        splits_created=created,
        notes=notes,
    )


def _capped(lines: list[str]) -> list[str]:
    more = len(lines) - _MAX_LINES
    return lines[:_MAX_LINES] + ([f"  ... and {more} more"] if more > 0 else [])


def format_drift(drift: SplitDrift) -> list[str]:
    """Warning lines for a data set that changed since its splits were saved."""
    lines = []
    if drift.new_groups:
        lines.append(
            f"WARNING: {len(drift.new_groups)} group(s) in the data are in no stored split and "
            f"are not used (e.g. {', '.join(drift.new_groups[:5])}); delete splits/ and "
            "class_to_idx.json to re-split with them"
        )
    if drift.missing_groups:
        lines.append(
            f"WARNING: {len(drift.missing_groups)} group(s) of the stored splits are no longer "
            f"in the data and are dropped (e.g. {', '.join(drift.missing_groups[:5])})"
        )
    return lines


def format_prepare_summary(prepared: PreparedData) -> str:
    """The split table, then exclusions, unreadable files and warnings, for the run log."""
    check = prepared.check
    state = "created" if prepared.splits_created else "reused from splits/"
    lines = [f"data split ({state}):", format_report(prepared.report)]
    if check.too_small:
        lines.append(f"excluded groups (an image below the minimum size): {len(check.too_small)}")
        rows = []
        for group, paths in sorted(check.too_small.items()):
            w, h = check.sizes[paths[0]]
            rows.append(f"  {group}: {len(paths)} small image(s), e.g. {paths[0]} ({w}x{h})")
        lines += _capped(rows)
    if check.unreadable:
        lines.append(f"unreadable files (skipped): {len(check.unreadable)}")
        lines += _capped([f"  {path}: {reason}" for path, reason in check.unreadable.items()])
    lines += format_drift(prepared.drift)
    lines += [f"NOTE: {note}" for note in prepared.notes]
    return "\n".join(lines)
