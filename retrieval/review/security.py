"""Who may use the review page: the token off loopback, and no requests from other sites.

The page changes the gallery, so three checks run before any route. Off loopback every
request carries the token the server printed (``?token=`` once, then a cookie, or the
``X-Review-Token`` header). On loopback the Host header must name this machine, so a web page
elsewhere cannot reach the server through DNS rebinding. And a POST whose Origin is another
site is refused, so a page open in the same browser cannot submit corrections (CSRF).
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from fastapi import Request, Response
from fastapi.responses import PlainTextResponse

from retrieval.review.settings import ReviewSettings, is_loopback

TOKEN_COOKIE = "review_token"
TOKEN_HEADER = "x-review-token"
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")

Handler = Callable[[Request], Awaitable[Response]]


def _hostname(netloc: str) -> str:
    return (urlsplit(f"//{netloc}").hostname or "").lower()


def refusal(request: Request, settings: ReviewSettings) -> tuple[int, str] | None:
    """(status, why) when ``request`` must be refused, else None."""
    host = request.headers.get("host", "")
    if is_loopback(settings.host) and _hostname(host) not in (*LOCAL_NAMES, settings.host):
        return 403, f"this review page answers on {settings.host} only, not as {host!r}"
    origin = request.headers.get("origin")
    if request.method == "POST" and origin and urlsplit(origin).netloc != host:
        return 403, f"a form from {origin} may not change this review page"
    if settings.token:
        given = (
            request.query_params.get("token")
            or request.headers.get(TOKEN_HEADER)
            or request.cookies.get(TOKEN_COOKIE)
            or ""
        )
        if not secrets.compare_digest(given.encode(), settings.token.encode()):
            return 401, (
                "this review page needs its token: open the address the server printed "
                "(it ends in ?token=...)"
            )
    return None


def guard(settings: ReviewSettings) -> Callable[[Request, Handler], Awaitable[Response]]:
    """The middleware: refuse as ``refusal`` says; remember a token given in the URL in a
    cookie, so that links and images on the page work without it."""

    async def middleware(request: Request, call_next: Handler) -> Response:
        refused = refusal(request, settings)
        if refused is not None:
            status, why = refused
            return PlainTextResponse(why, status_code=status)
        response = await call_next(request)
        if settings.token and request.query_params.get("token"):
            response.set_cookie(TOKEN_COOKIE, settings.token, httponly=True, samesite="strict")
        return response

    return middleware
