"""The answers a person reviews: the product's own answer to each photo (``answer_images``, as
``search.py photo.jpg`` gives it), kept with the gallery version it was given against and
listed least confident first, so a person's time goes where the model is unsure.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from retrieval.calibration.local_policy import search_local
from retrieval.query import QueryAnswer, answer_images
from retrieval.query_format import answer_dict
from retrieval.serving.gallery import current_version, now
from retrieval.workspace import Workspace, prepare_for

KINDS = ("error", "new", "rejected", "accepted")
# show= filter of the queue -> the kinds it lists ("rejected" is every declined answer)
FILTERS = {
    "all": KINDS,
    "rejected": ("new", "rejected"),
    "new": ("new",),
    "accepted": ("accepted",),
}
NEW_INDIVIDUAL = "new individual"  # how decide's reason names a far nearest match


@dataclass(frozen=True)
class ReviewItem:
    """One photo's answer on the page. ``photo``: absolute path answered (the id is its hash,
    so answering a photo again replaces its entry); ``name``: what the user called it."""

    id: str
    photo: str
    name: str
    answer: QueryAnswer
    gallery_version: str
    answered_at: str
    notes: tuple[str, ...] = ()  # what the search applied (local matching on or off, and why)

    @property
    def kind(self) -> str:
        """accepted; new (declined: nothing known is close); rejected (declined otherwise:
        the evidence is split); error (the photo could not be answered)."""
        decision = self.answer.decision
        if self.answer.error or decision is None:
            return "error"
        if decision.accepted:
            return "accepted"
        far = NEW_INDIVIDUAL in decision.reason or decision.predicted < 0
        return "new" if far else "rejected"

    @property
    def confidence(self) -> float:
        """Calibrated P(the candidate is right); -1 for a photo that could not be answered."""
        decision = self.answer.decision
        return -1.0 if decision is None else decision.confidence

    @property
    def candidate(self) -> str | None:
        """The individual the answer names, or the rule's best candidate when declined."""
        return self.answer.class_name or self.answer.predicted_name

    def summary(self) -> dict:
        """The answer as ``search.py --format json`` gives it, with where it was given."""
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "gallery_version": self.gallery_version,
            "answered_at": self.answered_at,
            **answer_dict(self.answer),
        }


def item_id(photo: str) -> str:
    return hashlib.sha256(photo.encode("utf-8")).hexdigest()[:16]


def gallery_version(ws: Workspace) -> str:
    """The saved gallery version the workspace serves (its ``current.json``)."""
    return current_version(ws.gallery_root) or "unsaved"


@dataclass
class AnswerBook:
    """The answers of this server's session by id; not saved (the corrections log is)."""

    items: dict[str, ReviewItem] = field(default_factory=dict)

    def add(self, items: Sequence[ReviewItem]) -> None:
        for item in items:
            self.items.pop(item.id, None)  # re-answered: moves to the end
            self.items[item.id] = item

    def get(self, item_id: str) -> ReviewItem | None:
        return self.items.get(item_id)

    def queue(self, show: str = "all") -> list[ReviewItem]:
        """The answers of kinds ``show`` lists, least confident first (errors before all)."""
        kinds = FILTERS.get(show, KINDS)
        chosen = [item for item in self.items.values() if item.kind in kinds]
        return sorted(chosen, key=lambda item: item.confidence)

    def counts(self) -> dict[str, int]:
        return {show: len(self.queue(show)) for show in FILTERS}


def answer_photos(
    ws: Workspace, photos: Sequence[tuple[Path, str]], *, top_k: int, local_match: str
) -> list[ReviewItem]:
    """Answer ``photos`` ((absolute path, name shown) pairs) on the product's decision path,
    with local matching as ``--local_match`` says."""
    notes: list[str] = []
    local = search_local(
        ws,
        local_match=local_match,
        read_val=lambda: prepare_for(ws.loaded, ws.workdir, data=None, image_root=None).val,
        report=notes.append,
        progress=False,
    )
    answers = answer_images(ws, [str(path) for path, _ in photos], top_k=top_k, local=local)
    names = {str(path): name for path, name in photos}
    version = gallery_version(ws)
    answered = now()
    return [
        ReviewItem(
            id=item_id(answer.image),
            photo=answer.image,
            name=names.get(answer.image, Path(answer.image).name),
            answer=answer,
            gallery_version=version,
            answered_at=answered,
            notes=tuple(notes),
        )
        for answer in answers
    ]
