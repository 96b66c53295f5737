"""Match two images' keypoints and count the matches one geometric transform explains.

Tentative matches are mutual nearest neighbours that pass Lowe's ratio test in both
directions; USAC MAGSAC then keeps those consistent with one homography, fundamental matrix or
affine map. The inlier count is the local score: repeated coat patterns and background give
tentative matches, but rarely many that agree on one transform.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from retrieval.errors import InputError
from retrieval.local.features import LocalFeatures

GEOMETRIES = ("homography", "fundamental", "affine")
_MIN_POINTS = {"homography": 4, "fundamental": 8, "affine": 3}
_FRAME_PX = 512.0  # points are verified in a frame whose longer side is this many pixels
_THRESHOLD_PX = 3.0  # MAGSAC's noise bound, in that frame
_CONFIDENCE = 0.999
_MAX_ITERS = 2000
_SEED = 0


@dataclass(frozen=True, eq=False)
class LocalMatch:
    """A verified match between a query and a gallery image, with the points to draw it."""

    inliers: int  # matches consistent with the transform: the local score
    tentative: int  # mutual ratio-test matches before the geometric check
    points_query: np.ndarray  # (inliers, 2) float32, original query pixels
    points_gallery: np.ndarray  # (inliers, 2) float32, original gallery pixels


def _no_match(tentative: int) -> LocalMatch:
    empty = np.zeros((0, 2), np.float32)
    return LocalMatch(0, tentative, empty, empty.copy())


def mutual_ratio_matches(
    query: np.ndarray, gallery: np.ndarray, *, ratio: float
) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i into query, j into gallery) that are mutual nearest neighbours and pass
    the ratio test both ways: best distance < ratio x second best. A side with one descriptor
    has no second best, so its single neighbour passes; an exact tie for best never passes.

    query: (Nq, 128) float32; gallery: (Ng, 128) float32. Returns two (M,) int64 arrays.
    The same pairs as OpenCV's ``BFMatcher.knnMatch(k=2)`` both ways, from one distance matrix
    (column minima are cheap in numpy where a column argmin or a transpose is not).
    """
    if len(query) == 0 or len(gallery) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    d2 = query @ gallery.T  # (Nq, Ng), becomes squared L2 in place
    d2 *= -2.0
    d2 += (query * query).sum(1)[:, None]
    d2 += (gallery * gallery).sum(1)[None, :]
    np.maximum(d2, 0.0, out=d2)
    r2 = ratio * ratio
    rows = np.arange(len(query))
    col_first = d2.min(axis=0)
    at_col_min = d2 == col_first[None, :]
    col_second = np.where(at_col_min, np.inf, d2).min(axis=0)
    tied = np.count_nonzero(at_col_min, axis=0) > 1
    col_second[tied] = col_first[tied]
    fwd = np.argmin(d2, axis=1)
    mutual = at_col_min[rows, fwd]
    first = d2[rows, fwd]
    d2[rows, fwd] = np.inf
    row_second = d2.min(axis=1)
    keep = mutual & (first < r2 * row_second) & (col_first[fwd] < r2 * col_second[fwd])
    return rows[keep], fwd[keep]


def _homography(pq: np.ndarray, pg: np.ndarray) -> np.ndarray | None:
    return cv2.findHomography(
        pq, pg, cv2.USAC_MAGSAC, _THRESHOLD_PX, maxIters=_MAX_ITERS, confidence=_CONFIDENCE
    )[1]


def _fundamental(pq: np.ndarray, pg: np.ndarray) -> np.ndarray | None:
    return cv2.findFundamentalMat(pq, pg, cv2.USAC_MAGSAC, _THRESHOLD_PX, _CONFIDENCE, _MAX_ITERS)[
        1
    ]


def _affine(pq: np.ndarray, pg: np.ndarray) -> np.ndarray | None:
    return cv2.estimateAffine2D(
        pq,
        pg,
        method=cv2.USAC_MAGSAC,
        ransacReprojThreshold=_THRESHOLD_PX,
        maxIters=_MAX_ITERS,
        confidence=_CONFIDENCE,
    )[1]


_ESTIMATORS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray | None]] = {
    "homography": _homography,
    "fundamental": _fundamental,
    "affine": _affine,
}


def _frame(features: LocalFeatures) -> float:
    """Scale from original pixels to the verification frame, so the threshold means the same
    on a 4000-pixel photo as on a 500-pixel one."""
    return _FRAME_PX / max(features.width, features.height, 1)


def check_geometry(geometry: str) -> str:
    """``geometry`` if it is one of ``GEOMETRIES``; else an InputError naming them."""
    if geometry not in GEOMETRIES:
        raise InputError(
            f"local matching geometry must be one of {', '.join(GEOMETRIES)}, got {geometry!r}"
        )
    return geometry


def match_local(
    query: LocalFeatures,
    gallery: LocalFeatures,
    *,
    ratio: float = 0.8,
    geometry: str = "homography",
) -> LocalMatch:
    """Verified matches of ``query`` in ``gallery``; 0 inliers when too few to fit the model.

    Deterministic: OpenCV's random generator is seeded before each estimate.
    """
    return match_local_ways(query, gallery, ratio=ratio, geometries=(geometry,))[0]


def match_local_ways(
    query: LocalFeatures,
    gallery: LocalFeatures,
    *,
    ratio: float = 0.8,
    geometries: tuple[str, ...] = GEOMETRIES,
) -> list[LocalMatch]:
    """``match_local`` under each of ``geometries``, in order, from one set of tentative
    matches: only the geometric check differs, so choosing the model on val matches once."""
    for geometry in geometries:
        check_geometry(geometry)
    if not 0.0 < ratio <= 1.0:
        raise InputError(f"the ratio test's ratio must be in (0, 1], got {ratio!r}")
    qi, gi = mutual_ratio_matches(query.descriptors, gallery.descriptors, ratio=ratio)
    pq = query.keypoints[qi] * np.float32(_frame(query))
    pg = gallery.keypoints[gi] * np.float32(_frame(gallery))
    return [_verify(geometry, query, gallery, qi, gi, pq, pg) for geometry in geometries]


def _verify(
    geometry: str,
    query: LocalFeatures,
    gallery: LocalFeatures,
    qi: np.ndarray,
    gi: np.ndarray,
    pq: np.ndarray,
    pg: np.ndarray,
) -> LocalMatch:
    """The tentative matches (qi, gi; their points pq, pg in the verification frame) that one
    ``geometry`` explains."""
    if len(qi) < _MIN_POINTS[geometry]:
        return _no_match(len(qi))
    cv2.setRNGSeed(_SEED)
    try:
        mask = _ESTIMATORS[geometry](pq, pg)
    except cv2.error:  # degenerate input (all points on a line...): nothing verified
        return _no_match(len(qi))
    if mask is None:
        return _no_match(len(qi))
    inlier = mask.ravel().astype(bool)
    return LocalMatch(
        int(inlier.sum()), len(qi), query.keypoints[qi[inlier]], gallery.keypoints[gi[inlier]]
    )
