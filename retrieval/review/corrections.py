"""A person's verdict on an answer, applied to the gallery through the enrolment code, logged,
and undoable.

Each action moves one photo in the gallery from the individual it holds it as (or none) to the
one the person chose (or none: unusable), with ``enroll_records`` and ``remove_photos``, which
journal the change and save the gallery atomically. The workdir's writer lock is taken per
action, not for the server's lifetime, so ``train.py`` or ``--enroll`` can run between two
corrections. The gallery changes first and the log entry is appended after: a crash between the
two leaves the photo enrolled (journalled, so never lost) and the answer still open, and doing
it again is a no-op for the gallery.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from retrieval.config import RunConfig
from retrieval.data.images import check_images
from retrieval.data.records import ImageRecord
from retrieval.enroll import enroll_records, remove_photos
from retrieval.errors import InputError
from retrieval.review.answers import ReviewItem, gallery_version
from retrieval.review.log import ACTIONS, append_entry, in_effect, read_log
from retrieval.serving.gallery import Gallery, now
from retrieval.workdir_lock import workdir_lock
from retrieval.workspace import Workspace

COMMAND = "search.py --serve (a review correction)"
_BAD_NAME = re.compile(r"[/\\\x00-\x1f\x7f]")


class WorkdirBusy(InputError):
    """Another process holds the workdir's writer lock (HTTP 409: try again)."""


def gallery_label(gallery: Gallery, photo: str) -> str | None:
    """The individual the gallery holds ``photo`` as, or None when it is not in the gallery."""
    for item_id, path in enumerate(gallery.paths_by_id):
        if path == photo and gallery.labels_by_id[item_id] >= 0:
            return gallery.class_names[gallery.labels_by_id[item_id]]
    return None


def check_name(name: str | None) -> str:
    """An individual's name as typed: it becomes a class name and a folder name on export."""
    name = (name or "").strip()
    if not name or name in (".", "..") or len(name) > 100 or _BAD_NAME.search(name):
        raise InputError(
            f"individual name {name!r} is not usable: give 1-100 characters without / or \\"
        )
    return name


def target_of(ws: Workspace, item: ReviewItem, action: str, name: str | None) -> str | None:
    """The individual ``action`` files the photo under (None: unusable, out of the gallery)."""
    if action not in ACTIONS:
        raise InputError(f"action {action!r} is not one of {', '.join(ACTIONS)}")
    if action == "unusable":
        return None
    if item.answer.error:
        raise InputError(
            f"{item.name} could not be answered ({item.answer.error}); mark it unusable"
        )
    if action == "confirm":
        if item.candidate is None:
            raise InputError(f"the answer for {item.name} names nobody to confirm; choose one")
        return item.candidate
    name = check_name(name)
    known = ws.gallery.live_classes()
    if action == "choose" and name not in known:
        raise InputError(
            f"{name!r} is not an individual of the gallery; pick one of the candidates, or use "
            "'new individual' to name a new one"
        )
    if action == "new" and name in known:
        raise InputError(
            f"{name!r} is already an individual of the gallery; use 'another individual' to "
            "file the photo under it"
        )
    return name


def act(ws: Workspace, item: ReviewItem, action: str, name: str | None = None) -> dict:
    """Apply a person's ``action`` on ``item`` (confirm, choose NAME, new NAME, unusable) to
    the gallery and log it; returns the log entry."""
    after = target_of(ws, item, action, name)
    with _writer_lock(ws):
        before = gallery_label(ws.gallery, item.photo)
        _move(ws, item.photo, before, after, why=f"review: {action} {item.name}")
        entry = _entry(ws, item, action, before=before, after=after)
        append_entry(ws.workdir, entry)
    return entry


def undo(ws: Workspace, item: ReviewItem) -> dict:
    """Undo the action in effect on ``item``: the gallery goes back to what it held the photo
    as before it, and an undo entry is logged; returns that entry."""
    with _writer_lock(ws):
        last = in_effect(read_log(ws.workdir)).get(item.id)
        if last is None:
            raise InputError(f"nothing to undo for {item.name}: no action in effect")
        before, after = gallery_label(ws.gallery, item.photo), last["before"]
        _move(ws, item.photo, before, after, why=f"review: undo {last['action']} {item.name}")
        entry = _entry(ws, item, "undo", before=before, after=after)
        entry["undoes"] = last["id"]
        append_entry(ws.workdir, entry)
    return entry


def _entry(ws: Workspace, item: ReviewItem, action: str, *, before, after) -> dict:
    return {
        "id": uuid.uuid4().hex[:12],
        "time": now(),
        "answer": item.id,
        "photo": item.photo,
        "action": action,
        "before": before,
        "after": after,
        "gallery_version": item.gallery_version,
        "gallery_version_after": gallery_version(ws),
        "overrode": item.summary(),
    }


@contextmanager
def _writer_lock(ws: Workspace) -> Iterator[None]:
    """The workdir's writer lock for one action; ``WorkdirBusy`` when another process has it."""
    with ExitStack() as stack:
        try:
            stack.enter_context(workdir_lock(ws.workdir, COMMAND))
        except InputError as err:
            raise WorkdirBusy(f"{err}; the correction was not made, try again then") from None
        yield


def _move(ws: Workspace, photo: str, before: str | None, after: str | None, *, why: str) -> None:
    """File ``photo`` under ``after`` instead of ``before`` (None: not in the gallery)."""
    if before == after:
        return
    record = ImageRecord(path=Path(photo), label=after or "", group=Path(photo).stem)
    if after is not None:
        _check_enrollable(ws, record)
    if before is not None:
        remove_photos(ws, [photo], why=why)
    if after is not None:
        summary = enroll_records(ws, [record], source=why)
        if summary.added != 1:
            raise InputError(f"{photo} could not be enrolled as {after}; see the server log")


def _check_enrollable(ws: Workspace, record: ImageRecord) -> None:
    """Refuse before the gallery changes a photo that enrolment would skip (too small,
    unreadable), so a relabelled photo is never removed without being added back."""
    min_size = RunConfig.from_dict(ws.loaded.config).data.min_size
    check = check_images([record], min_size=min_size, progress=False)
    if check.unreadable:
        reason = next(iter(check.unreadable.values()))
        raise InputError(f"the photo cannot be read ({reason}); mark it unusable")
    if not check.kept:
        w, h = check.sizes.get(record.path, (0, 0))
        raise InputError(
            f"the photo is {w}x{h} px, below the gallery's minimum size ({min_size} px), so it "
            "cannot be enrolled; mark it unusable"
        )
