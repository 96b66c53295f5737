"""``search.py --serve``: the review page on a local address, until Ctrl-C."""

from __future__ import annotations

from retrieval.review.app import create_app
from retrieval.review.settings import ReviewSettings
from retrieval.workspace import Workspace


def serve(ws: Workspace, settings: ReviewSettings) -> None:
    """Run the review page for ``ws`` with uvicorn; prints the address to open (with the
    token, off loopback)."""
    import uvicorn

    app = create_app(ws, settings)
    print(f"review page: {settings.address}   (Ctrl-C stops it)", flush=True)
    if settings.token:
        print(
            f"it listens on {settings.host}, beyond this machine: every request needs the token "
            "in that address; share it only with the people who review",
            flush=True,
        )
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
