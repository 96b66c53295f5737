"""Growing and pruning the saved gallery without retraining (issue 6: open-world gallery).

New photos (of known or brand-new individuals) are embedded with the gallery's own model and
added under fresh, never-reused IDs; a class can be removed. Every change is recorded in the
gallery's history, and each save is atomic (a crash leaves the previous gallery in place).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.config import RunConfig
from retrieval.data.images import check_images
from retrieval.data.records import ImageRecord
from retrieval.data.scan import load_records
from retrieval.errors import InputError
from retrieval.serving.evidence import decide_in_gallery
from retrieval.serving.gallery import now
from retrieval.serving.journal import append_entry
from retrieval.serving.local_scores import forget_photos
from retrieval.workspace import Workspace, refresh_policy


@dataclass(frozen=True)
class EnrollSummary:
    added: int
    new_classes: tuple[str, ...]
    already_enrolled: int
    excluded_small: int
    unreadable: int
    policy_note: str = ""
    # (photo, the individual it is enrolled as, the one the gallery names, confidence)
    conflicts: tuple[tuple[str, str, str, float], ...] = ()


def enroll(ws: Workspace, source: Path, *, image_root: Path | None = None) -> EnrollSummary:
    """Embed the images of a folder ``{class}/{ID}_{seq}.jpg`` or a manifest and add them."""
    return enroll_records(ws, load_records(source, image_root), source=str(source))


def enroll_records(ws: Workspace, records: list[ImageRecord], *, source: str) -> EnrollSummary:
    """Embed labelled photos and add them; journalled, so they survive a gallery rebuild.

    The training image policy applies (minimum size from the checkpoint's config); images whose
    path is already in the gallery are skipped, so enrolling a folder twice adds nothing.
    """
    min_size = RunConfig.from_dict(ws.loaded.config).data.min_size
    check = check_images(records, min_size=min_size)
    known = ws.gallery.live_paths()
    fresh = [r for r in check.kept if str(r.path) not in known]
    before = set(ws.gallery.class_names)
    conflicts: list[tuple[str, str, str, float]] = []
    if fresh:
        embeddings = ws.embed(fresh, desc="enrolling")
        conflicts = _conflicts(ws, fresh, embeddings)
        paths = [str(r.path) for r in fresh]
        ws.gallery.add_items(embeddings, [r.label for r in fresh], paths)
        forget_photos(ws.gallery_root, paths)  # a replaced file gets fresh keypoints
        photos = [[str(r.path), r.label] for r in fresh]
        _journal(ws, {"event": "enroll", "source": source, "photos": photos})
    new_classes = tuple(sorted({r.label for r in fresh} - before))
    ws.gallery.history.append(
        {
            "event": "enroll",
            "source": source,
            "items": len(fresh),
            "new_classes": list(new_classes),
            "time": now(),
        }
    )
    note = refresh_policy(ws, why=f"enrolled {len(fresh)} photo(s)") if fresh else ""
    ws.gallery.save(ws.gallery_root)
    return EnrollSummary(
        added=len(fresh),
        new_classes=new_classes,
        already_enrolled=len(check.kept) - len(fresh),
        excluded_small=sum(len(v) for v in check.too_small.values()),
        unreadable=len(check.unreadable),
        policy_note=note,
        conflicts=tuple(conflicts),
    )


def _conflicts(ws: Workspace, records, embeddings) -> list[tuple[str, str, str, float]]:
    """Photos the gallery confidently names as another individual than the one they are
    enrolled as, decided as a search would (a mislabelled photo, or two names for one animal)."""
    gallery = ws.gallery
    if gallery.size == 0:
        return []
    names = gallery.class_names
    decisions = decide_in_gallery(gallery, embeddings).decisions
    return [
        (str(r.path), r.label, names[d.label], d.confidence)
        for r, d in zip(records, decisions, strict=True)
        if d.accepted and names[d.label] != r.label
    ]


def remove(ws: Workspace, class_name: str) -> tuple[int, str]:
    """Remove every gallery item of ``class_name``; returns how many were removed and what
    became of the decision policy (chosen again on val without that individual)."""
    label = ws.gallery.class_index(class_name)
    paths = [ws.gallery.paths_by_id[i] for i in np.flatnonzero(ws.gallery.labels_by_id == label)]
    removed = ws.gallery.remove_class(class_name)
    forget_photos(ws.gallery_root, paths)
    if removed == 0:
        raise InputError(f"class {class_name!r} has no items left in the gallery")
    _journal(ws, {"event": "remove", "class": class_name})
    ws.gallery.history.append(
        {
            "event": "remove",
            "class": class_name,
            "items": removed,
            "time": now(),
        }
    )
    note = refresh_policy(ws, why=f"removed {class_name}")
    ws.gallery.save(ws.gallery_root)
    return removed, note


def remove_photos(ws: Workspace, paths: list[str], *, why: str) -> int:
    """Remove these photos' items from the gallery (a correction undone, say); journalled, so
    a rebuilt gallery leaves them out too. Returns how many items went."""
    removed = ws.gallery.remove_paths(set(paths))
    if removed == 0:
        return 0
    forget_photos(ws.gallery_root, paths)
    _journal(ws, {"event": "remove_photos", "paths": list(paths), "why": why})
    ws.gallery.history.append(
        {"event": "remove_photos", "items": removed, "why": why, "time": now()}
    )
    refresh_policy(ws, why=why)
    ws.gallery.save(ws.gallery_root)
    return removed


def _journal(ws: Workspace, entry: dict) -> None:
    """Confirm a change in the workdir's journal before the gallery holding it is saved."""
    ws.gallery.journal = append_entry(ws.workdir, entry)


def format_enroll(summary: EnrollSummary) -> str:
    line = f"enrolled {summary.added} image(s)"
    if summary.new_classes:
        shown = ", ".join(summary.new_classes[:10])
        more = f" and {len(summary.new_classes) - 10} more" if len(summary.new_classes) > 10 else ""
        line += f"; new classes: {shown}{more}"
    skipped = [
        (summary.already_enrolled, "already in the gallery"),
        (summary.excluded_small, "below the minimum size"),
        (summary.unreadable, "unreadable"),
    ]
    extra = [f"{n} {why}" for n, why in skipped if n]
    line += f" (skipped: {', '.join(extra)})" if extra else ""
    for path, label, other, confidence in summary.conflicts[:5]:
        line += (
            f"\nnote: {path} is enrolled as {label} but the gallery names it {other} "
            f"(confidence {confidence:.2f}); check the label"
        )
    if len(summary.conflicts) > 5:
        line += f"\nnote: {len(summary.conflicts) - 5} more such photo(s)"
    return line + (f"\n{summary.policy_note}" if summary.policy_note else "")
