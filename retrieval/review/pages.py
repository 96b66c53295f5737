"""The pages and pictures the review page shows (GET routes): the queue, an answer, a query
beside a candidate, the dashboard, and the same answers as JSON for scripts and tests.

Photos are served only as the answers of this session name them (the query, or one of its
matches by rank), never by a path the client gives.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse

from retrieval.query import Match
from retrieval.review.answers import FILTERS, ReviewItem
from retrieval.review.dashboard import figure_path, model_reports, review_days
from retrieval.review.log import in_effect, outcome, read_log
from retrieval.review.pictures import explained, thumbnail
from retrieval.review.state import ReviewState, render, review_state

router = APIRouter()


def _match(item: ReviewItem, rank: int) -> Match:
    if not 0 <= rank < len(item.answer.matches):
        raise HTTPException(404, f"answer {item.id} has no match {rank}")
    return item.answer.matches[rank]


def _open_after(state: ReviewState, item: ReviewItem | None, effect: dict) -> ReviewItem | None:
    """The next answer nobody has acted on, least confident first (after ``item``)."""
    queue = [i for i in state.book.queue() if i.id not in effect]
    if item is not None and item in queue:
        after = queue[queue.index(item) + 1 :]
        return next(iter(after), None)
    return next(iter(queue), None)


@router.get("/", response_class=HTMLResponse)
def queue_page(request: Request, show: str = "all") -> HTMLResponse:
    state = review_state(request)
    effect = in_effect(read_log(state.ws.workdir))
    with state.lock:
        items, counts = state.book.queue(show), state.book.counts()
        next_open = _open_after(state, None, effect)
    return render(
        request,
        "queue.html",
        items=items,
        show=show if show in FILTERS else "all",
        counts=counts,
        effect=effect,
        outcome=outcome,
        roots=state.settings.folders,
        next_open=next_open,
    )


@router.get("/answers/{item_id}", response_class=HTMLResponse)
def answer_page(request: Request, item_id: str) -> HTMLResponse:
    state = review_state(request)
    item = state.item(item_id)
    log = read_log(state.ws.workdir)
    entries = [e for e in log if e["answer"] == item.id]
    effect = in_effect(log)
    with state.lock:
        individuals = sorted(state.ws.gallery.live_classes())
        next_open = _open_after(state, item, effect)
    return render(
        request,
        "answer.html",
        item=item,
        entries=entries,
        effect=effect.get(item.id),
        outcome=outcome,
        individuals=individuals,
        next_open=next_open,
    )


@router.get("/answers/{item_id}/compare/{rank}", response_class=HTMLResponse)
def compare_page(request: Request, item_id: str, rank: int) -> HTMLResponse:
    item = review_state(request).item(item_id)
    return render(request, "compare.html", item=item, rank=rank, match=_match(item, rank))


@router.get("/dashboard", response_class=HTMLResponse)
def dashboard_page(request: Request) -> HTMLResponse:
    workdir = review_state(request).ws.workdir
    days = review_days(read_log(workdir))
    return render(request, "dashboard.html", reports=model_reports(workdir), days=days)


@router.get("/api/queue")
def queue_json(request: Request, show: str = "all") -> list[dict]:
    state = review_state(request)
    effect = in_effect(read_log(state.ws.workdir))
    with state.lock:
        items = state.book.queue(show)
    return [{**i.summary(), "in_effect": effect.get(i.id)} for i in items]


@router.get("/api/answers/{item_id}")
def answer_json(request: Request, item_id: str) -> dict:
    state = review_state(request)
    item = state.item(item_id)
    entries = [e for e in read_log(state.ws.workdir) if e["answer"] == item.id]
    return {**item.summary(), "in_effect": in_effect(entries).get(item.id), "log": entries}


@router.get("/photos/{item_id}")
def query_photo(request: Request, item_id: str) -> FileResponse:
    return _file(Path(review_state(request).item(item_id).photo))


@router.get("/photos/{item_id}/thumb")
def query_thumb(request: Request, item_id: str) -> FileResponse:
    state = review_state(request)
    return _thumb(Path(state.item(item_id).photo), state.ws.workdir)


@router.get("/answers/{item_id}/matches/{rank}")
def match_photo(request: Request, item_id: str, rank: int) -> FileResponse:
    return _file(Path(_match(review_state(request).item(item_id), rank).path))


@router.get("/answers/{item_id}/matches/{rank}/thumb")
def match_thumb(request: Request, item_id: str, rank: int) -> FileResponse:
    state = review_state(request)
    return _thumb(Path(_match(state.item(item_id), rank).path), state.ws.workdir)


@router.get("/answers/{item_id}/matches/{rank}/explained.png")
def match_explained(request: Request, item_id: str, rank: int) -> FileResponse:
    state = review_state(request)
    item = state.item(item_id)
    _match(item, rank)
    ws = state.ws
    path = explained(item.answer, rank, ws.workdir, ws.gallery.fusion, ws.foreground)
    return FileResponse(path, media_type="image/png")


@router.get("/figures/{name}")
def figure(request: Request, name: str) -> FileResponse:
    path = figure_path(review_state(request).ws.workdir, name)
    if path is None:
        raise HTTPException(404, f"no figure {name!r}; run evaluate.py to make the figures")
    return FileResponse(path, media_type="image/png")


def _file(photo: Path) -> FileResponse:
    if not photo.is_file():
        raise HTTPException(404, f"{photo} is no longer there")
    return FileResponse(photo)


def _thumb(photo: Path, workdir: Path) -> FileResponse:
    _file(photo)
    return FileResponse(thumbnail(photo, workdir), media_type="image/jpeg")
