"""What a person does on the review page (POST routes): send photos or a folder to be
answered, act on an answer (confirm, another individual, new individual, unusable), undo.
Each redirects to the page that shows the result (POST-redirect-GET: a reload resends nothing).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse
from starlette.datastructures import UploadFile

from retrieval.errors import InputError
from retrieval.review import corrections
from retrieval.review.answers import ReviewItem
from retrieval.review.state import review_state
from retrieval.review.uploads import PHOTOS, TooLarge, folder_photos, store_upload

router = APIRouter()
SEE_OTHER = 303


def _shown(items: list[ReviewItem]) -> RedirectResponse:
    """One answer: its page; several: the queue, least confident first."""
    target = f"/answers/{items[0].id}" if len(items) == 1 else "/"
    return RedirectResponse(target, status_code=SEE_OTHER)


@router.post("/upload")
async def upload(request: Request) -> RedirectResponse:
    """Photos from the browser (``photos``, one or many): vetted, stored by content, answered.
    Refused files are listed on the next page; when none is usable the request fails."""
    state = review_state(request)
    s = state.settings
    length = int(request.headers.get("content-length") or 0)
    if length > s.max_request_bytes:
        raise TooLarge(
            f"this upload is {length / 2**20:.0f} MB; send at most "
            f"{s.max_request_bytes / 2**20:.0f} MB at once (fewer photos per upload)"
        )
    form = await request.form(max_files=s.max_files, max_fields=10)
    try:
        files = [f for f in form.getlist("photos") if isinstance(f, UploadFile)]
        if not files:
            raise InputError("choose one or more photos to upload")
        sent = [(await f.read(s.max_upload_bytes + 1), f.filename) for f in files]
    finally:
        await form.close()
    photos_dir = state.ws.workdir / PHOTOS
    stored, refused = [], []
    for data, name in sent:
        try:
            stored.append(
                store_upload(
                    data,
                    name,
                    photos_dir=photos_dir,
                    max_bytes=s.max_upload_bytes,
                    max_pixels=s.max_pixels,
                )
            )
        except InputError as err:
            if len(sent) == 1:
                raise
            refused.append(f"refused: {err}")
    if not stored:
        raise InputError("no photo could be used: " + "; ".join(refused))
    items = await run_in_threadpool(state.answer, [(p.path, p.name) for p in stored])
    state.flash += refused
    return _shown(items)


@router.post("/folder")
def folder(request: Request, folder: str = Form(...)) -> RedirectResponse:
    """Every photo under a folder inside the ``--folder`` roots, answered in one go."""
    state = review_state(request)
    roots = state.settings.folders
    photos = folder_photos(folder, roots, max_files=state.settings.max_files)
    items = state.answer([(p, _relative(p, roots)) for p in photos])
    return _shown(items)


def _relative(photo: Path, roots: tuple[Path, ...]) -> str:
    root = next(r for r in roots if photo.is_relative_to(r))
    return str(photo.relative_to(root.parent))


@router.post("/answers/{item_id}/action")
def act(
    request: Request, item_id: str, action: str = Form(...), name: str | None = Form(None)
) -> RedirectResponse:
    """confirm | choose (``name``: an individual of the gallery) | new (``name``) | unusable."""
    state = review_state(request)
    item = state.item(item_id)
    with state.lock:
        entry = corrections.act(state.ws, item, action, name)
    done = f"filed as {entry['after']}" if entry["after"] else "marked unusable"
    state.flash.append(f"{item.name}: {done} (gallery {entry['gallery_version_after']})")
    return RedirectResponse(f"/answers/{item.id}", status_code=SEE_OTHER)


@router.post("/answers/{item_id}/undo")
def undo(request: Request, item_id: str) -> RedirectResponse:
    state = review_state(request)
    item = state.item(item_id)
    with state.lock:
        entry = corrections.undo(state.ws, item)
    now = f"back to {entry['after']}" if entry["after"] else "out of the gallery again"
    state.flash.append(f"{item.name}: undone, {now}")
    return RedirectResponse(f"/answers/{item.id}", status_code=SEE_OTHER)
