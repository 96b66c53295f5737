"""Replaying the enrolment journal into a gallery (issue 38 item 1): a rebuilt gallery gets
the user's enrolments and removals back, embedded by its own model, and a gallery saved before
a killed enrolment catches up with what the journal confirmed.

A photo that can no longer be read is reported, never silently dropped: it stays in the
journal, so a later rebuild indexes it again once the file is back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.data.images import check_images
from retrieval.data.records import ImageRecord
from retrieval.serving.gallery import Gallery
from retrieval.serving.journal import append_entry, journal_path, pending, read_entries

Embed = Callable[[list[ImageRecord], str], np.ndarray]


@dataclass(frozen=True)
class Replay:
    """What a replay applied to a gallery."""

    entries: int  # journal entries replayed
    enrolled: int  # photos indexed
    removed: int  # gallery items removed
    unreadable: tuple[str, ...]  # enrolled photos that could not be read (not indexed)

    def describe(self, journal: Path) -> str:
        if not self.entries:
            return ""
        line = (
            f"replayed {self.entries} enrolment change(s) from {journal}: {self.enrolled} "
            f"photo(s) enrolled, {self.removed} removed"
        )
        if self.unreadable:
            shown = ", ".join(self.unreadable[:5])
            more = f" and {len(self.unreadable) - 5} more" if len(self.unreadable) > 5 else ""
            line += (
                f"\nwarning: {len(self.unreadable)} enrolled photo(s) cannot be read now (or are "
                f"below the minimum size) and are not in the gallery: {shown}{more}. They stay "
                "in the journal: put the files back and run --rebuild_gallery to index them"
            )
        return line


def replay(gallery: Gallery, entries: list[dict], embed: Embed, *, min_size: int) -> Replay:
    """Apply ``entries`` (enrol / remove / remove_photos, in order) to ``gallery`` in memory.

    Photos already live in the gallery are not added twice; all photos to add are embedded in
    one batch, so replaying a long journal costs one pass of the model over them.
    """
    photos = {
        path: label
        for entry in entries
        if entry["event"] == "enroll"
        for path, label in entry["photos"]
    }
    records = [ImageRecord(Path(p), label, f"enrolled:{p}") for p, label in photos.items()]
    check = check_images(records, min_size=min_size, progress=False) if records else None
    readable = [] if check is None else check.kept
    vectors = dict(
        zip(
            [str(r.path) for r in readable],
            embed(readable, "replaying enrolments") if readable else [],
            strict=True,
        )
    )
    enrolled = removed = 0
    for entry in entries:
        if entry["event"] == "enroll":
            live = gallery.live_paths()
            add = [(p, label) for p, label in entry["photos"] if p in vectors and p not in live]
            if add:
                gallery.add_items(
                    np.stack([vectors[p] for p, _ in add]),
                    [label for _, label in add],
                    [p for p, _ in add],
                )
            enrolled += len(add)
        elif entry["event"] == "remove":
            if entry["class"] in gallery.class_names:
                removed += gallery.remove_class(entry["class"])
        elif entry["event"] == "remove_photos":
            removed += gallery.remove_paths(set(entry["paths"]))
    unreadable = tuple(sorted(set(photos) - {str(r.path) for r in readable}))
    return Replay(len(entries), enrolled, removed, unreadable)


def catch_up(gallery: Gallery, workdir: Path, embed: Embed, *, min_size: int) -> Replay | None:
    """Replay the journal entries ``gallery`` does not hold yet (all of them for a gallery just
    built from the train split); None when its state is no prefix of the journal's, i.e. it
    was restored to an older version in another way and must be rebuilt."""
    entries = read_entries(workdir)
    todo = pending(entries, gallery.journal)
    if todo is None:
        return None
    done = replay(gallery, todo, embed, min_size=min_size)
    gallery.journal = len(entries)
    return done


def seed_entries(workdir: Path, gallery: Gallery) -> list[dict]:
    """The first journal entries of a workdir whose gallery was changed before the journal
    existed: its enrolled photos (IDs after the train split's, which ``build`` numbered first)
    and its removed classes; [] when there is a journal or nothing to seed. Reads only."""
    if journal_path(workdir).exists() or not gallery.history:
        return []
    events = {e["event"] for e in gallery.history}
    if not events & {"enroll", "remove"} or gallery.history[0]["event"] != "build":
        return []
    built = int(gallery.history[0]["items"])
    live = gallery.labels_by_id >= 0
    photos = [
        [gallery.paths_by_id[i], gallery.class_names[gallery.labels_by_id[i]]]
        for i in range(built, len(gallery.paths_by_id))
        if live[i]
    ]
    removed = sorted(
        {e["class"] for e in gallery.history if e["event"] == "remove"} - gallery.live_classes()
    )
    return ([{"event": "enroll", "photos": photos, "seeded": True}] if photos else []) + [
        {"event": "remove", "class": name, "seeded": True} for name in removed
    ]


def seed_journal(workdir: Path, entries: list[dict]) -> int:
    """Write ``seed_entries``' entries as the journal's first; returns its length then."""
    for entry in entries:
        append_entry(workdir, entry)
    return len(entries)
