"""What every route of the review page shares: the workspace, the answers of the session, one
lock around the in-memory gallery, and rendering a template."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from fastapi import HTTPException, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from retrieval.review.answers import AnswerBook, ReviewItem, answer_photos
from retrieval.review.settings import ReviewSettings
from retrieval.workspace import Workspace

PACKAGE = Path(__file__).resolve().parent  # templates/ and static/ ship inside the package


@dataclass
class ReviewState:
    """``lock`` serialises every read and change of the gallery (Faiss and the tables are not
    thread-safe, and a correction replaces them); ``flash``: lines for the next page shown."""

    ws: Workspace
    settings: ReviewSettings
    book: AnswerBook = field(default_factory=AnswerBook)
    lock: threading.Lock = field(default_factory=threading.Lock)
    flash: list[str] = field(default_factory=list)

    def answer(self, photos: list[tuple[Path, str]]) -> list[ReviewItem]:
        """Answer photos and add them to the session's answers."""
        s = self.settings
        with self.lock:
            items = answer_photos(self.ws, photos, top_k=s.top_k, local_match=s.local_match)
            self.book.add(items)
        return items

    def item(self, item_id: str) -> ReviewItem:
        """The answer ``item_id`` of this session, or a 404."""
        found = self.book.get(item_id)
        if found is None:
            raise HTTPException(404, f"no answer {item_id!r} in this session; ask again")
        return found

    def take_flash(self) -> list[str]:
        lines, self.flash = self.flash, []
        return lines


def review_state(request: Request) -> ReviewState:
    return request.app.state.review


@cache
def templates() -> Jinja2Templates:
    return Jinja2Templates(directory=PACKAGE / "templates")


def render(request: Request, name: str, *, status: int = 200, **context) -> HTMLResponse:
    """The template ``name`` with ``context``, plus the lines flashed since the last page."""
    flash = review_state(request).take_flash()
    return templates().TemplateResponse(
        request, name, {"flash": flash, **context}, status_code=status
    )
