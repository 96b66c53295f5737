"""Open user images the one way the whole project does, and vet a data set before a long run.

``load_rgb`` is the only image reader: EXIF orientation, alpha compositing and mode conversion
happen here so that training, evaluation and search see identical pixels (SPEC 1.5).
``check_images`` decodes every file once before training (SPEC 1.6) so that a truncated JPEG
is reported by path at the start instead of killing a DataLoader worker hours later, and so that
groups with an image below the minimum size are excluded whole.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from retrieval.data.records import ImageRecord
from retrieval.errors import InputError
from retrieval.io import read_json, write_json_atomic

NEUTRAL_BACKGROUND: tuple[int, int, int] = (124, 116, 104)
"""ImageNet mean in 0-255. Transparent pixels are composited onto this one fixed colour and
carry no signal (SPEC 1.5): after ImageNet normalisation they are zero to within 0.01 (the
nearest 8-bit values to the mean), after the [-1, 1] scaling of TensorFlow-ported backbones
within 0.2 of zero (``retrieval.input_norm``). The same colour fills the corners left by
RandomRotation."""

_CACHE_VERSION = 1
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # EXIF orientations that turn w x h into h x w
_HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


class UnreadableImage(InputError):
    """An image file that cannot be decoded; ``reason`` is the short why, without the path."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot read image {path}: {reason}; re-export the file or delete it")
        self.path = path
        self.reason = reason


# Pillow pads truncated files with grey instead of failing when some other library has set
# ImageFile.LOAD_TRUNCATED_IMAGES = True. We force it off while we decode (restored when the
# last concurrent decoder finishes) so truncation is always detected.
_strict_lock = threading.Lock()
_strict_state = {"depth": 0, "saved": False}


@contextmanager
def _strict_truncation() -> Iterator[None]:
    with _strict_lock:
        if _strict_state["depth"] == 0:
            _strict_state["saved"] = ImageFile.LOAD_TRUNCATED_IMAGES
            ImageFile.LOAD_TRUNCATED_IMAGES = False
        _strict_state["depth"] += 1
    try:
        yield
    finally:
        with _strict_lock:
            _strict_state["depth"] -= 1
            if _strict_state["depth"] == 0:
                ImageFile.LOAD_TRUNCATED_IMAGES = _strict_state["saved"]


def _reason(path: Path, error: Exception) -> str:
    """One short phrase for why Pillow failed, for logs and the unreadable-files list."""
    if isinstance(error, FileNotFoundError):
        return "file not found"
    if isinstance(error, Image.DecompressionBombError):
        return f"too many pixels to decode safely ({error}); downscale the file"
    if isinstance(error, UnidentifiedImageError):
        return f"not an image Pillow can read (extension {path.suffix or 'none'})"
    if isinstance(error, OSError) and "truncated" in str(error):
        return "truncated (the file ends before the image data does)"
    return f"corrupt or unsupported ({type(error).__name__}: {error})"


def _high_depth_to_rgb(im: Image.Image) -> Image.Image:
    """16-bit / int / float grey -> 8-bit RGB by scaling, not clipping (which whitens it)."""
    a = np.asarray(im, dtype=np.float64)
    if im.mode.startswith("I;16") or (a.size and a.max() > 255):
        a = a / 257.0
    grey = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; transparency is composited onto ``NEUTRAL_BACKGROUND``."""
    if im.mode == "RGB":
        return im
    if im.mode in _HIGH_DEPTH_MODES:
        return _high_depth_to_rgb(im)
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        out = Image.new("RGB", im.size, NEUTRAL_BACKGROUND)
        out.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
        return out
    return im.convert("RGB")


def _orientation(im: Image.Image) -> int:
    """EXIF orientation 1-8; 1 (as stored) when the EXIF block is missing or malformed."""
    try:
        value = im.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # a broken EXIF block should not make the pixels unreadable
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def load_rgb(path: Path) -> Image.Image:
    """Decode ``path`` fully, upright (EXIF) and as RGB; ``UnreadableImage`` names a bad file.

    Full decoding (not just the header) is what surfaces truncation. Grey, palette, CMYK and
    16-bit images become RGB; RGBA / LA / palette-with-transparency are composited.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise UnreadableImage(path, "empty file (0 bytes)")
        # Our own file handle: closing it does not invalidate the decoded image, whereas
        # ``with Image.open(path)`` would leave a closed image behind.
        with path.open("rb") as f, _strict_truncation():
            im = Image.open(f)
            im.load()
            if _orientation(im) != 1:
                ImageOps.exif_transpose(im, in_place=True)
            return to_rgb(im)
    except UnreadableImage:
        raise
    except Exception as e:  # Pillow raises many types on corrupt files; all mean "unreadable"
        raise UnreadableImage(path, _reason(path, e)) from None


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) as ``load_rgb`` would return it, read from the header without decoding."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = _orientation(im)
    except Exception as e:
        raise UnreadableImage(path, _reason(path, e)) from None
    return (h, w) if orientation in _SWAPPING_ORIENTATIONS else (w, h)


@dataclass(frozen=True)
class ImageCheck:
    """Which records survive the image policy (SPEC 1.6), and why the others did not."""

    kept: list[ImageRecord]
    too_small: dict[str, list[Path]]  # group ID -> its images below min_size (group excluded)
    unreadable: dict[Path, str]  # path -> reason (only that file is skipped)
    sizes: dict[Path, tuple[int, int]] = field(default_factory=dict)  # readable: (w, h)

    @property
    def excluded_groups(self) -> list[str]:
        """Group IDs excluded whole because one of their images is too small, sorted."""
        return sorted(self.too_small)


def _decode_size(path: Path) -> tuple[int, int] | str:
    """(w, h) after a full decode, or the reason the file is unreadable."""
    try:
        return load_rgb(path).size
    except UnreadableImage as e:
        return e.reason


def _load_cache(cache_path: Path | None) -> dict[str, list[int]]:
    """Cached ``path -> [bytes, mtime_ns, w, h]``; a damaged cache is just ignored."""
    if cache_path is None:
        return {}
    try:
        data = read_json(cache_path)
    except (FileNotFoundError, InputError):
        return {}
    ok = isinstance(data, dict) and data.get("version") == _CACHE_VERSION
    files = data.get("files") if ok else None
    return files if isinstance(files, dict) else {}


def _stat_key(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _decode_all(paths: list[Path], *, num_workers: int, progress: bool) -> Iterator[tuple]:
    """Yield ``(path, size-or-reason)`` for every path, decoding in a thread pool."""
    bar = tqdm(
        total=len(paths), desc="checking images", unit="img", disable=not progress or not paths
    )
    with bar:
        if num_workers == 1:
            for p in paths:
                yield p, _decode_size(p)
                bar.update()
            return
        with ThreadPoolExecutor(max_workers=num_workers) as pool:
            futures = {pool.submit(_decode_size, p): p for p in paths}
            for fut in as_completed(futures):
                yield futures[fut], fut.result()
                bar.update()


def _measure(
    paths: list[Path], *, cache_path: Path | None, num_workers: int, progress: bool
) -> tuple[dict[Path, tuple[int, int]], dict[Path, str]]:
    """Sizes of readable files and reasons for unreadable ones, decoding only cache misses."""
    cache = _load_cache(cache_path)
    sizes: dict[Path, tuple[int, int]] = {}
    unreadable: dict[Path, str] = {}
    fresh: dict[str, list[int]] = {}
    todo: list[Path] = []
    keys: dict[Path, tuple[int, int]] = {}
    for p in paths:
        key = _stat_key(p)
        if key is None:
            unreadable[p] = "file not found or not accessible"
            continue
        keys[p] = key
        hit = cache.get(str(p))
        if isinstance(hit, list) and len(hit) == 4 and tuple(hit[:2]) == key:
            sizes[p] = (int(hit[2]), int(hit[3]))
            fresh[str(p)] = hit
        else:
            todo.append(p)
    try:
        for p, result in _decode_all(todo, num_workers=num_workers, progress=progress):
            if isinstance(result, str):
                unreadable[p] = result  # not cached: a permissions fix does not change mtime
            else:
                sizes[p] = result
                fresh[str(p)] = [*keys[p], *result]
    finally:  # keep what was decoded even on Ctrl-C, so a re-run resumes
        if cache_path is not None and todo:
            write_json_atomic(cache_path, {"version": _CACHE_VERSION, "files": fresh})
    return sizes, unreadable


def check_images(
    records: Sequence[ImageRecord],
    *,
    min_size: int,
    cache_path: Path | None = None,
    num_workers: int = 1,
    progress: bool = True,
) -> ImageCheck:
    """Decode every image once and apply the image policy (SPEC 1.6).

    A group is excluded whole when any of its images has a shorter side below ``min_size``;
    an unreadable file is skipped alone. Sizes are cached in ``cache_path`` (JSON keyed by
    absolute path, file size and mtime), so a re-run, even with another ``min_size``, decodes
    only new or changed files.
    """
    if not isinstance(min_size, int) or min_size < 0:
        raise InputError(f"--min_size must be an integer >= 0, got {min_size!r}")
    if not isinstance(num_workers, int) or num_workers < 1:
        raise InputError(f"--num_workers must be an integer >= 1, got {num_workers!r}")
    paths = sorted({r.path for r in records})
    sizes, unreadable = _measure(
        paths, cache_path=cache_path, num_workers=num_workers, progress=progress
    )
    too_small: dict[str, list[Path]] = {}
    for r in sorted(records):
        if r.path in sizes and min(sizes[r.path]) < min_size:
            too_small.setdefault(r.group, []).append(r.path)
    kept = [r for r in sorted(records) if r.path in sizes and r.group not in too_small]
    return ImageCheck(
        kept=kept,
        too_small=too_small,
        unreadable=dict(sorted(unreadable.items())),
        sizes=sizes,
    )
