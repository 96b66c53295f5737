"""Going back to an earlier gallery version (issue 38 item 1): ``search.py --restore_gallery``.

Each save keeps the last few versions (``Gallery.keep_versions``). Restoring one saves it
again as the newest version and records a ``restore`` entry in the enrolment journal, so the
enrolments it undoes stay undone when the gallery is next rebuilt, while the journal itself
keeps every line (going forward again is one more restore).
"""

from __future__ import annotations

from pathlib import Path

from retrieval.errors import InputError
from retrieval.io import read_json
from retrieval.serving.gallery import Gallery, current_version, gallery_versions, now
from retrieval.serving.journal import append_entry


def describe_versions(root: Path) -> str:
    """One line per version on disk, oldest first, the current one marked."""
    current = current_version(root)
    lines = []
    for name in gallery_versions(root):
        try:
            meta = read_json(Path(root) / name / "meta.json")
        except InputError:
            lines.append(f"  {name}  (unreadable)")
            continue
        changes = [e for e in meta.get("history", []) if e["event"] != "decision_policy"]
        last = changes[-1] if changes else {}
        mark = "*" if name == current else " "
        lines.append(
            f"{mark} {name}  {meta.get('items', '?')} images, "
            f"{len(meta.get('class_names', []))} classes; last change: "
            f"{last.get('event', '?')} {last.get('time', '')}".rstrip()
        )
    return "\n".join(lines) if lines else f"no gallery versions in {root}"


def restore_version(workdir: Path, root: Path, version: str) -> str:
    """Make ``version`` the current gallery again; returns a line saying what happened."""
    if version not in gallery_versions(root):
        raise InputError(
            f"no gallery version {version!r} in {root}; the versions kept are:\n"
            f"{describe_versions(root)}"
        )
    if version == current_version(root):
        return f"{version} is already the current gallery"
    gallery = Gallery.load(root, version=version)
    position = gallery.journal
    gallery.journal = append_entry(workdir, {"event": "restore", "position": position})
    gallery.history.append({"event": "restore", "version": version, "time": now()})
    folder = gallery.save(root)
    return (
        f"restored gallery {version} ({gallery.size} images) as {folder.name}; enrolment "
        f"changes made after it are undone, and stay undone when the gallery is rebuilt"
    )
