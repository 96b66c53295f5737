"""Turn the user's data (a class-per-folder tree or a CSV manifest) into ``ImageRecord``s.

This is the first place user input is touched, so every mistake a user can make in the layout
(SPEC 1.1) stops here with one line that names the file or folder and says how to fix it.
Image *contents* are not opened here; ``images.check_images`` does that.
"""

from __future__ import annotations

import csv
import os
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

from retrieval.data.records import ImageRecord
from retrieval.errors import InputError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".png",
        ".bmp",
        ".gif",
        ".tif",
        ".tiff",
        ".webp",
        ".pgm",
        ".ppm",
        ".pbm",
        ".pnm",
    }
)
"""Lower-case suffixes Pillow reads; compare with ``path.suffix.lower()``."""

_MAX_LISTED = 5


def is_image_file(path: Path) -> bool:
    """True for a visible file whose extension is one Pillow reads (case-insensitive)."""
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def _examples(items: Iterable[object]) -> str:
    """'a, b, c (and 7 more)': enough of a list to find the problem, short enough for one line."""
    items = [str(i) for i in items]
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return f"{shown} (and {more} more)" if more > 0 else shown


def parse_group(stem: str) -> str | None:
    """Group ID of a stem ``{ID}_{seq}``: the text before the last ``_``; None if malformed."""
    group, sep, seq = stem.rpartition("_")
    if not sep or not group or not seq:
        return None
    return group


def _list_dir(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)


def _check_root(root: Path) -> Path:
    root = Path(root).expanduser().absolute()
    if not root.exists():
        raise InputError(
            f"data folder {root} does not exist; pass --data pointing to a folder of class "
            "sub-folders (data/{class}/{ID}_{seq}.jpg) or to a CSV manifest"
        )
    if not root.is_dir():
        raise InputError(
            f"data path {root} is not a folder; pass a folder of class sub-folders, "
            "or a .csv manifest (filename,label[,group])"
        )
    return root


def _class_files(root: Path) -> dict[str, list[Path]]:
    """Class folder name -> its image files (sorted), checking the tree's shape."""
    entries = _list_dir(root)
    class_dirs = [e for e in entries if e.is_dir()]
    loose = [e.name for e in entries if e.is_file() and is_image_file(Path(e.name))]
    if not class_dirs:
        raise InputError(
            f"data folder {root} has no class sub-folders; arrange images as "
            f"{root}/{{class}}/{{ID}}_{{seq}}.jpg (one sub-folder per class)"
        )
    if loose:
        raise InputError(
            f"data folder {root} has {len(loose)} image(s) outside any class folder "
            f"({_examples(loose)}); move them into {root}/{{class}}/"
        )
    files = {
        folder.name: [
            Path(e.path)
            for e in _list_dir(Path(folder.path))
            if e.is_file() and is_image_file(Path(e.name))
        ]
        for folder in class_dirs
    }
    if not any(files.values()):
        raise InputError(
            f"no images found in the {len(files)} class folder(s) of {root}; "
            f"allowed extensions: {' '.join(sorted(IMAGE_EXTENSIONS))}"
        )
    empty = [name for name, paths in files.items() if not paths]
    if empty:
        raise InputError(
            f"class folder(s) with no images in {root}: {_examples(empty)}; "
            "add images to them or remove the folder(s) (nested sub-folders are not searched)"
        )
    return files


def scan_folder(root: Path) -> list[ImageRecord]:
    """Records for ``root/{class}/{ID}_{seq}.{ext}``, sorted; group = text before the last ``_``.

    Hidden files and folders are skipped, as are files without an image extension (notes,
    ``Thumbs.db``). A file with an image extension that is not an image is caught later by
    ``check_images``.
    """
    root = _check_root(root)
    records: list[ImageRecord] = []
    bad: list[str] = []
    group_classes: dict[str, set[str]] = defaultdict(set)
    for label, paths in _class_files(root).items():
        for path in paths:
            group = parse_group(path.stem)
            if group is None:
                bad.append(f"{label}/{path.name}")
                continue
            group_classes[group].add(label)
            records.append(ImageRecord(path=path, label=label, group=group))
    if bad:
        raise InputError(
            f"{len(bad)} file name(s) in {root} are not {{ID}}_{{seq}}.ext: {_examples(bad)}; "
            "rename to {ID}_{seq}.ext, e.g. rex-front_1.jpg, rex-front_2.jpg (images sharing "
            "an ID are one group)"
        )
    _check_groups_single_class(group_classes, where=str(root), unit="class folders")
    return sorted(records)


def _check_groups_single_class(
    group_classes: dict[str, set[str]], *, where: str, unit: str
) -> None:
    """A group is one object, so it has one class: anything else is a labelling mistake."""
    clashes = sorted(g for g, labels in group_classes.items() if len(labels) > 1)
    if clashes:
        first = clashes[0]
        labels = " and ".join(sorted(group_classes[first]))
        others = f" ({len(clashes) - 1} more IDs like this)" if len(clashes) > 1 else ""
        raise InputError(
            f"group ID {first!r} appears under two {unit} ({labels}) in {where}{others}; "
            "a group ID names one object, so rename the files of one of them"
        )


def load_records(source: Path, image_root: Path | None = None) -> list[ImageRecord]:
    """Records from a data folder or a ``.csv`` manifest (``image_root`` applies to CSVs only)."""
    source = Path(source).expanduser()
    if source.suffix.lower() == ".csv":
        return read_manifest(source, image_root)
    if source.is_file():
        raise InputError(
            f"data path {source} is a file but not a .csv manifest; pass a folder of class "
            "sub-folders or a CSV with columns filename,label[,group]"
        )
    if image_root is not None:
        raise InputError(
            f"--image_root {image_root} only applies to a CSV manifest, but --data {source} "
            "is a folder; drop --image_root"
        )
    return scan_folder(source)


# Manifest -------------------------------------------------------------------------------

_LABEL_COLUMNS = ("label", "ground_truth")


def _read_rows(csv_path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header (stripped, lower-case) and rows of a manifest, or an InputError naming it."""
    if not csv_path.is_file():
        what = "does not exist" if not csv_path.exists() else "is not a file"
        raise InputError(f"manifest {csv_path} {what}; pass --data pointing to an existing CSV")
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip().lower() for h in next(reader, [])]
            rows = [dict(zip(header, (v.strip() for v in row), strict=False)) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"cannot read manifest {csv_path}: {e}; save it as UTF-8 CSV") from None
    return header, rows


def _manifest_columns(csv_path: Path, header: list[str]) -> tuple[str, str | None]:
    label_col = next((c for c in _LABEL_COLUMNS if c in header), None)
    if "filename" not in header or label_col is None:
        found = ",".join(header) if header else "(none)"
        raise InputError(
            f"manifest {csv_path} has columns {found}; expected filename,label[,group] "
            "(or filename,ground_truth); fix the header line"
        )
    return label_col, ("group" if "group" in header else None)


def read_manifest(csv_path: Path, image_root: Path | None) -> list[ImageRecord]:
    """Records from a CSV ``filename,label[,group]`` (``ground_truth`` also names the label).

    Relative filenames resolve against ``image_root`` (default: the CSV's folder). Without a
    group column, or with an empty group cell, each image is its own group (group = filename).
    """
    csv_path = Path(csv_path).expanduser().absolute()
    header, rows = _read_rows(csv_path)
    label_col, group_col = _manifest_columns(csv_path, header)
    if not rows:
        raise InputError(f"manifest {csv_path} has a header but no rows; add one row per image")
    root = Path(image_root).expanduser().absolute() if image_root is not None else csv_path.parent
    if not root.is_dir():
        raise InputError(f"--image_root {root} is not a folder; pass the folder holding the images")
    empty = [
        str(i + 2) for i, r in enumerate(rows) if not r.get("filename") or not r.get(label_col)
    ]
    if empty:
        raise InputError(
            f"manifest {csv_path}: {len(empty)} row(s) with an empty filename or {label_col} "
            f"(lines {_examples(empty)}); fill them in or delete those rows"
        )
    counts = Counter(r["filename"] for r in rows)
    dupes = sorted(n for n, k in counts.items() if k > 1)
    if dupes:
        raise InputError(
            f"manifest {csv_path} lists {len(dupes)} filename(s) more than once: "
            f"{_examples(dupes)}; keep one row per image"
        )
    records = [
        ImageRecord(
            path=(root / r["filename"]).absolute(),
            label=r[label_col],
            group=(r.get(group_col) if group_col else None) or r["filename"],
        )
        for r in rows
    ]
    missing = [
        r["filename"] for r, rec in zip(rows, records, strict=True) if not rec.path.is_file()
    ]
    if missing:
        guess = csv_path.parent / csv_path.stem  # Kaggle: train.csv beside train/
        hint = f" (perhaps --image_root {guess})" if (guess / missing[0]).is_file() else ""
        raise InputError(
            f"manifest {csv_path}: {len(missing)} of {len(records)} files not found under "
            f"{root} (e.g. {_examples(missing)}); pass --image_root with the folder holding "
            f"them{hint}"
        )
    group_labels: dict[str, set[str]] = defaultdict(set)
    for r in records:
        group_labels[r.group].add(r.label)
    _check_groups_single_class(group_labels, where=str(csv_path), unit="labels")
    return sorted(records)
