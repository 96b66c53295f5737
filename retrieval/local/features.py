"""RootSIFT keypoints of one image, kept on the animal, in the original image's coordinates.

SIFT runs at a fixed working size (the longer side, never upscaled) so that cost and the
number of keypoints do not depend on the camera; keypoints are mapped back to the original
pixels so that matches can be drawn on the photo the user gave. Descriptors are RootSIFT
(Arandjelovic & Zisserman 2012): L1-normalised, then square-rooted, so that Euclidean distance
between them compares histograms by the Hellinger kernel, which matches better than plain SIFT.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
from PIL import Image, ImageOps

from retrieval.data.images import UnreadableImage, load_rgb, to_rgb
from retrieval.errors import InputError

DESCRIPTOR_DIM = 128
# Where keypoints are kept on a photo without alpha: everywhere ("none"), or where the
# backbone's feature map is strong ("saliency", retrieval.model.saliency); chosen on val.
FOREGROUNDS = ("none", "saliency")
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


@dataclass(frozen=True)
class LocalSettings:
    """How keypoints are extracted; stored with a keypoint store so that enrolled photos match
    the rest."""

    max_keypoints: int = 1024
    work_size: int = 512  # longer side SIFT sees, in pixels (never upscaled)
    foreground: str = "none"  # one of FOREGROUNDS

    def __post_init__(self) -> None:
        for name in ("max_keypoints", "work_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name} must be an integer >= 1, got {value!r}")
        if self.foreground not in FOREGROUNDS:
            raise InputError(
                f"foreground must be one of {', '.join(FOREGROUNDS)}, got {self.foreground!r}"
            )


class ForegroundEstimate(Protocol):
    """Where the animal is in photos without alpha (``retrieval.model.saliency``): one (h, w)
    bool map per photo, covering the whole upright photo at any resolution. ``key`` names what
    made the maps (the model), so keypoints kept by them are cached for it alone."""

    key: str

    def masks(self, paths: Sequence[str]) -> list[np.ndarray]: ...


@dataclass(frozen=True, eq=False)
class LocalFeatures:
    """Keypoints of one image. ``eq=False``: arrays have no single truth value."""

    keypoints: np.ndarray  # (N, 2) float32 x, y in pixels of the original (upright) image
    descriptors: np.ndarray  # (N, 128) float32 RootSIFT: non-negative, unit L2 norm
    width: int  # of the original image, pixels
    height: int

    def __post_init__(self) -> None:
        n = len(self.keypoints)
        assert self.keypoints.shape == (n, 2) and self.keypoints.dtype == np.float32
        assert self.descriptors.shape == (n, DESCRIPTOR_DIM)
        assert self.descriptors.dtype == np.float32

    def __len__(self) -> int:
        return len(self.keypoints)

    @classmethod
    def empty(cls, width: int, height: int) -> LocalFeatures:
        """No keypoints (a flat image, or a mask with nothing opaque)."""
        return cls(
            np.zeros((0, 2), np.float32), np.zeros((0, DESCRIPTOR_DIM), np.float32), width, height
        )


def _alpha_of(path: Path, size: tuple[int, int]) -> Image.Image | None:
    """The upright alpha channel of ``path`` when it has one, else None."""
    try:
        with Image.open(path) as im:
            if im.mode not in _ALPHA_MODES and "transparency" not in im.info:
                return None
            im.load()
            # a broken EXIF block: load_rgb keeps such an image as stored, and so do we
            with contextlib.suppress(Exception):
                im = ImageOps.exif_transpose(im)
            alpha = im.convert("RGBA").getchannel("A")
    except Exception as e:  # the pixels decoded a moment ago in load_rgb; the alpha did not
        raise UnreadableImage(path, f"alpha channel unreadable ({type(e).__name__})") from None
    return alpha if alpha.size == size else None


def load_for_matching(path: Path) -> Image.Image:
    """The image as ``load_rgb`` gives it (EXIF, modes, the one-line error), plus its alpha.

    ``load_rgb`` composites cut-outs onto a neutral colour, losing where the animal is; here
    an image with transparency comes back as RGBA (those same RGB pixels, the file's alpha), so
    that ``extract_local_features`` keeps keypoints on the animal. Opaque images stay RGB.
    """
    path = Path(path)
    rgb = load_rgb(path)
    alpha = _alpha_of(path, rgb.size)
    if alpha is None:
        return rgb
    rgba = rgb.convert("RGBA")
    rgba.putalpha(alpha)
    return rgba


def _alpha_mask(image: Image.Image) -> np.ndarray | None:
    """(H, W) bool, True where opaque; None when the image has no transparency."""
    if image.mode not in _ALPHA_MODES and "transparency" not in image.info:
        return None
    return np.asarray(image.convert("RGBA").getchannel("A")) > 0


def _rootsift(sift: np.ndarray) -> np.ndarray:
    """(N, 128) SIFT -> RootSIFT, rounded to float16 precision (what the store keeps), so a
    stored gallery matches exactly as a freshly extracted one."""
    l1 = np.maximum(sift.sum(axis=1, keepdims=True), 1e-12)
    root = np.sqrt(sift / l1)
    return root.astype(np.float16).astype(np.float32)


def extract_local_features(
    image: Image.Image,
    *,
    max_keypoints: int = 1024,
    work_size: int = 512,
    foreground: np.ndarray | None = None,
) -> LocalFeatures:
    """At most ``max_keypoints`` RootSIFT keypoints of ``image``, the strongest first.

    An image with transparency (``load_for_matching`` of a cut-out) only gets keypoints where
    alpha > 0: background keypoints match between photos of different animals too. Without
    alpha, ``foreground`` ((h, w) bool over the whole photo, any resolution; a
    ``ForegroundEstimate`` mask) keeps them where it is True; alpha, being exact, wins.
    """
    LocalSettings(max_keypoints=max_keypoints, work_size=work_size)  # validates
    width, height = image.size
    grey = np.asarray(to_rgb(image).convert("L"))
    alpha = _alpha_mask(image)
    mask = None if alpha is None else alpha.astype(np.uint8) * 255
    scale = min(1.0, work_size / max(width, height))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
        if mask is not None:
            mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
    if mask is None and foreground is not None:
        estimate = np.asarray(foreground, bool).astype(np.uint8) * 255
        mask = cv2.resize(estimate, grey.shape[::-1], interpolation=cv2.INTER_NEAREST)
    sift = cv2.SIFT_create(nfeatures=max_keypoints)
    found, raw = sift.detectAndCompute(grey, mask)
    if raw is None or not found:
        return LocalFeatures.empty(width, height)
    responses = np.array([k.response for k in found], np.float32)
    keep = np.argsort(-responses, kind="stable")[:max_keypoints]  # ties can exceed the cap
    points = np.array([found[i].pt for i in keep], np.float64)
    # pixel centres: x_work + 0.5 = (x_orig + 0.5) * (work width / original width)
    sx, sy = grey.shape[1] / width, grey.shape[0] / height
    points = (points + 0.5) / np.array([sx, sy]) - 0.5
    return LocalFeatures(
        points.astype(np.float32), _rootsift(raw[keep].astype(np.float32)), width, height
    )
