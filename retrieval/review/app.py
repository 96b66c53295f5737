"""The review web page: FastAPI routes over Jinja2 templates (plain HTML forms and a little
script, no front-end build), serving one workspace's gallery with the product's own answers.

``create_app`` wires the pieces: the request guard (``security``), the pages (``pages``), the
actions (``actions``), static files, and one error page that turns an ``InputError`` into its
message with the right status.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from retrieval.errors import InputError
from retrieval.review import actions, pages
from retrieval.review.corrections import WorkdirBusy
from retrieval.review.security import guard
from retrieval.review.settings import ReviewSettings
from retrieval.review.state import PACKAGE, ReviewState, render
from retrieval.review.uploads import OutsideRoots, TooLarge
from retrieval.workspace import Workspace

STATUS = {OutsideRoots: 403, WorkdirBusy: 409, TooLarge: 413}


def create_app(ws: Workspace, settings: ReviewSettings) -> FastAPI:
    """The review page for ``ws`` (its gallery is changed in place by corrections)."""
    app = FastAPI(title="review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.review = ReviewState(ws, settings)
    app.middleware("http")(guard(settings))
    app.mount("/static", StaticFiles(directory=PACKAGE / "static"), name="static")
    app.include_router(pages.router)
    app.include_router(actions.router)
    app.add_exception_handler(InputError, _refused)
    return app


async def _refused(request: Request, exc: Exception) -> Response:
    """The message of an ``InputError`` (what was wrong and what to do), as JSON for /api."""
    status = STATUS.get(type(exc), 400)
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": str(exc)}, status_code=status)
    return render(request, "error.html", status=status, message=str(exc))
