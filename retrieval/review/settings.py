"""What a review server is started with, validated once (``search.py --serve``).

Kept apart from ``retrieval.config``: that module is the config a training run stores with its
checkpoint; these settings live only as long as one server and are never saved.
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path

from retrieval.errors import InputError

LOOPBACK = "127.0.0.1"
DEFAULT_PORT = 8765
MAX_UPLOAD_BYTES = 25 * 2**20  # one photo; a camera JPEG is under 15 MB
MAX_PIXELS = 50_000_000  # 50 MP: larger is downscaled by the user, or a decompression bomb
MAX_FILES = 200  # photos per upload or folder
MAX_REQUEST_BYTES = 512 * 2**20  # one upload request, all its photos together


def is_loopback(host: str) -> bool:
    """Whether ``host`` binds to this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ReviewSettings:
    """``folders``: the only folders a "review this folder" request may read (resolved);
    ``token``: required on every request when set, and always set off loopback."""

    host: str = LOOPBACK
    port: int = DEFAULT_PORT
    folders: tuple[Path, ...] = ()
    top_k: int = 5
    local_match: str = "auto"
    token: str | None = None
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    max_pixels: int = MAX_PIXELS
    max_files: int = MAX_FILES
    max_request_bytes: int = MAX_REQUEST_BYTES

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise InputError(f"--port {self.port} is not a TCP port; give 1-65535, e.g. 8765")
        if self.top_k < 1:
            raise InputError(f"--top_k must be >= 1, got {self.top_k}")
        if not is_loopback(self.host) and not self.token:
            raise InputError(
                f"--host {self.host} opens the review page to the network, which needs a "
                "token; start it through build_settings, which makes one"
            )
        for folder in self.folders:
            if not folder.is_absolute() or not folder.is_dir():
                raise InputError(
                    f"--folder {folder} is not an existing folder; give folders of photos "
                    "the page may read"
                )

    @property
    def address(self) -> str:
        """The URL to open, with the token where one is needed."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        query = f"/?token={self.token}" if self.token else "/"
        return f"http://{host}:{self.port}{query}"


def build_settings(
    *, host: str, port: int, folders: list[str], top_k: int, local_match: str
) -> ReviewSettings:
    """Settings from the ``--serve`` flags; a fresh random token when the host is not loopback."""
    roots = []
    for folder in folders:
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise InputError(
                f"--folder {folder} is not an existing folder; give folders of photos the page "
                "may read"
            )
        roots.append(path.resolve())
    token = None if is_loopback(host) else secrets.token_urlsafe(24)
    return ReviewSettings(
        host=host,
        port=port,
        folders=tuple(roots),
        top_k=top_k,
        local_match=local_match,
        token=token,
    )
