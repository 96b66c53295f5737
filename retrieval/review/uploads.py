"""Photos into the review: uploads vetted and stored by content, folders confined to the roots.

A photo sent by a browser is untrusted. Its file name is never used as a path: it is stored as
``<workdir>/review/photos/<sha256>.<ext>``, the extension taken from the format Pillow
identifies, so the same photo uploaded twice is one file. Its size is capped before it is
opened and its pixel count before it is decoded (a decompression bomb is refused), and only
image formats are kept. The gallery will reference the stored path, so it is written
atomically and never deleted by the page.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from PIL import Image, UnidentifiedImageError

from retrieval.errors import InputError
from retrieval.io import atomic_path
from retrieval.query import collect_images

PHOTOS = Path("review") / "photos"  # under the workdir
FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}


class OutsideRoots(InputError):
    """A folder request outside the folders the server was started with (HTTP 403)."""


class TooLarge(InputError):
    """An upload over the size limit (HTTP 413)."""


@dataclass(frozen=True)
class StoredPhoto:
    path: Path  # absolute, under <workdir>/review/photos
    name: str  # what the user called it: for display only


def display_name(name: str | None) -> str:
    """The last part of a client's file name, printable and short: a label, never a path."""
    base = PureWindowsPath(PurePosixPath(name or "").name).name
    base = re.sub(r"[\x00-\x1f\x7f]", "", base).strip()
    return base[:80] or "photo"


def store_upload(
    data: bytes, name: str | None, *, photos_dir: Path, max_bytes: int, max_pixels: int
) -> StoredPhoto:
    """Vet one uploaded photo and store it under its content hash; ``InputError`` says why a
    file is refused (too big, not an image, too many pixels, damaged)."""
    shown = display_name(name)
    if not data:
        raise InputError(f"{shown} is empty (0 bytes); choose a photo file")
    if len(data) > max_bytes:
        raise TooLarge(
            f"{shown} is {len(data) / 2**20:.1f} MB; the review page takes photos up to "
            f"{max_bytes / 2**20:.0f} MB: downscale it or export it as JPEG"
        )
    extension = FORMATS[_identify(data, shown, max_pixels)]
    path = Path(photos_dir) / f"{hashlib.sha256(data).hexdigest()}{extension}"
    if not path.is_file():
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    return StoredPhoto(path.resolve(), shown)


def _identify(data: bytes, shown: str, max_pixels: int) -> str:
    """The Pillow format of ``data``, after its header (size, pixel count) and structure pass."""
    accepted = ", ".join(sorted(FORMATS))
    try:
        # Image.open reads the header only; beyond twice Pillow's own limit it refuses itself
        with Image.open(io.BytesIO(data)) as im:
            fmt, (width, height) = im.format, im.size
            if fmt not in FORMATS:
                raise InputError(f"{shown} is a {fmt} image; accepted formats: {accepted}")
            if width * height > max_pixels:
                raise _too_many_pixels(shown, f"{width}x{height}", max_pixels)
            im.verify()
    except InputError:
        raise
    except Image.DecompressionBombError:
        raise _too_many_pixels(shown, "more than Pillow decodes safely", max_pixels) from None
    except UnidentifiedImageError:
        raise InputError(f"{shown} is not an image; accepted formats: {accepted}") from None
    except Exception as err:  # Pillow raises many types on damaged files
        raise InputError(f"{shown} is damaged ({err}); export it again") from None
    return fmt


def _too_many_pixels(shown: str, size: str, max_pixels: int) -> InputError:
    return InputError(
        f"{shown} has too many pixels ({size}; the limit is {max_pixels / 1e6:.0f} megapixels, "
        "which also refuses decompression bombs): downscale it"
    )


def folder_photos(folder: str, roots: tuple[Path, ...], *, max_files: int) -> list[Path]:
    """The photos under ``folder`` (recursively), which must lie inside one of ``roots``.

    A relative ``folder`` is taken under the first root. Links that lead out of the roots are
    skipped, so a folder cannot be used to read elsewhere.
    """
    if not roots:
        raise OutsideRoots(
            "this review server reads no folders; restart it with --folder DIR to allow "
            "reviewing the photos under DIR"
        )
    path = Path(folder.strip()).expanduser()
    resolved = (path if path.is_absolute() else roots[0] / path).resolve()
    if not _inside(resolved, roots):
        allowed = ", ".join(str(r) for r in roots)
        raise OutsideRoots(
            f"{folder} is outside the folders this server may read ({allowed}); give a folder "
            "under one of them, or restart the server with another --folder"
        )
    if not resolved.is_dir():
        raise InputError(f"{folder} is not a folder under {roots[0]}; check the name")
    found, _ = collect_images([str(resolved)])
    photos = [p.resolve() for p in found if _inside(p.resolve(), roots)]
    if not photos:
        raise InputError(f"{folder} holds no photos (JPEG, PNG, ...)")
    if len(photos) > max_files:
        raise InputError(
            f"{folder} holds {len(photos)} photos; the page answers up to {max_files} at once: "
            "give a sub-folder"
        )
    return photos


def _inside(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)
