"""Why did search answer this? The query photo beside its best match, verified matches drawn.

A cosine says two photos look alike to the network; it does not show where. Lines between the
keypoints that one geometric transform explains (``retrieval.local.matching``) show which
spots, scars or coat marks the two photos share: the picture HotSpotter/Wildbook users check a
match with before they accept it. Drawn with the Agg renderer (no pyplot), written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from matplotlib import colormaps, patheffects
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from PIL import Image

from retrieval.data.images import load_rgb
from retrieval.errors import InputError
from retrieval.local.features import ForegroundEstimate, LocalSettings
from retrieval.local.matching import LocalMatch, check_geometry, match_local
from retrieval.report.png import DPI, save_png
from retrieval.serving.fusion import GEOMETRY, MAX_KEYPOINTS, Fusion
from retrieval.serving.local_scores import extract_photos

if TYPE_CHECKING:
    from retrieval.query import QueryAnswer

HEIGHT_PX = 480  # both photos are scaled to this height
GAP_PX = 16  # white space between the two photos
TITLE_PX = 56  # band above the photos for the two-line title
MAX_LINES = 60  # more lines hide the photos under them


class Explanation(NamedTuple):
    """What ``explain_answer`` drew: the PNG, the individual shown, the verified matches."""

    path: Path
    class_name: str
    inliers: int
    score: float  # cosine of the query and the match

    def describe(self) -> str:
        return (
            f"wrote {self.path}: query beside {self.class_name} "
            f"({self.inliers} verified keypoint matches)"
        )


def matching_settings(fusion: Fusion | None) -> tuple[LocalSettings, str]:
    """The keypoint settings and geometry val chose for the gallery (what ``--local_match``
    counts with), so the picture shows the inliers search scored; defaults without one."""
    if fusion is None:
        return LocalSettings(max_keypoints=MAX_KEYPOINTS), GEOMETRY  # the fusion's defaults
    return fusion.settings, fusion.geometry


def spread_subset(points: np.ndarray, limit: int) -> np.ndarray:
    """Indices of at most ``limit`` of ``points`` (N, 2), far apart from each other.

    Greedy farthest-point sampling from the point farthest from the centroid: the lines drawn
    cover the whole matched region instead of bunching where keypoints are densest.
    Returns (min(N, limit),) int64, in the order picked; deterministic.
    """
    n = len(points)
    if n <= limit:
        return np.arange(n, dtype=np.int64)
    xy = points.astype(np.float64)
    first = int(np.argmax(((xy - xy.mean(axis=0)) ** 2).sum(axis=1)))
    picked = [first]
    nearest = ((xy - xy[first]) ** 2).sum(axis=1)  # (N,) squared distance to the picked set
    for _ in range(limit - 1):
        nxt = int(np.argmax(nearest))
        picked.append(nxt)
        np.minimum(nearest, ((xy - xy[nxt]) ** 2).sum(axis=1), out=nearest)
    return np.array(picked, dtype=np.int64)


def _scaled(image: Image.Image) -> tuple[np.ndarray, float]:
    """(HEIGHT_PX, w, 3) uint8 pixels of ``image`` at the common height, and the scale used."""
    scale = HEIGHT_PX / image.height
    width = max(1, round(image.width * scale))
    resized = image.resize((width, HEIGHT_PX), Image.Resampling.BICUBIC)
    return np.asarray(resized), scale


def draw_match(query: Path, gallery: Path, match: LocalMatch, *, title: str, out: Path) -> Path:
    """``query`` (left) beside ``gallery`` (right) at a common height, a line per verified
    match from its query point to its gallery point, at most ``MAX_LINES`` (a spread subset).

    The PNG is (TITLE_PX + HEIGHT_PX) pixels high and both scaled widths plus GAP_PX wide.
    Points are in original (upright) pixels, as ``match_local`` returns them.
    """
    left, s_query = _scaled(load_rgb(Path(query)))
    right, s_gallery = _scaled(load_rgb(Path(gallery)))
    width = left.shape[1] + GAP_PX + right.shape[1]
    height = TITLE_PX + HEIGHT_PX
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)  # (H, W, 3) uint8
    canvas[TITLE_PX:, : left.shape[1]] = left
    canvas[TITLE_PX:, left.shape[1] + GAP_PX :] = right

    keep = spread_subset(match.points_query, MAX_LINES)
    # pixel centres: x_shown + 0.5 = (x_orig + 0.5) * scale
    pq = (match.points_query[keep] + 0.5) * s_query - 0.5 + [0, TITLE_PX]
    pg = (match.points_gallery[keep] + 0.5) * s_gallery - 0.5 + [left.shape[1] + GAP_PX, TITLE_PX]
    colours = colormaps["hsv"](np.linspace(0.0, 1.0, len(keep), endpoint=False))

    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    fig.figimage(canvas, origin="upper", zorder=-1)  # pixels 1:1, under the lines
    segments = np.stack([pq, pg], axis=1)  # (L, 2 ends, 2) x, y
    lines = LineCollection(segments, colors=colours, linewidths=1.2)
    lines.set_path_effects([patheffects.withStroke(linewidth=2.6, foreground="black")])
    ax.add_collection(lines)  # the dark edge keeps a line visible on a coat of its own colour
    ends = np.concatenate([pq, pg])
    ax.scatter(ends[:, 0], ends[:, 1], s=14, c=np.concatenate([colours, colours]), edgecolors="k")
    if len(keep) < match.inliers:
        title += f" ({len(keep)} of {match.inliers} drawn)"
    ax.text(width / 2, TITLE_PX / 2, title, ha="center", va="center", fontsize=11)
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)  # axes coordinates = canvas pixels, y down
    ax.set_axis_off()
    return save_png(fig, Path(out), tight=False)


def explain_answer(
    answer: QueryAnswer,
    out: Path,
    *,
    settings: LocalSettings,
    geometry: str,
    foreground: ForegroundEstimate | None = None,
) -> Explanation:
    """Match ``answer``'s photo with its top match (as printed) and draw the two to ``out``,
    keypoints extracted as search extracts them (``foreground``: the workspace's estimate).

    Returns an ``Explanation`` rather than the bare path: the caller reports the inlier count
    the picture shows, which only this matching knows.
    """
    check_geometry(geometry)
    if answer.error:
        raise InputError(f"cannot explain {answer.image}: {answer.error}; fix the photo first")
    if not answer.matches:
        raise InputError(
            f"--explain: {answer.image} has no gallery match to draw (the gallery is empty); "
            "enrol photos with --enroll, then search again"
        )
    top = answer.matches[0]
    query, gallery = Path(answer.image), Path(top.path)
    features = extract_photos([str(query), str(gallery)], settings, foreground, progress=False)
    match = match_local(*features, geometry=geometry)
    title = (
        f"query (left) beside {top.class_name} (right)\n"
        f"{match.inliers} verified keypoint matches, cosine {top.score:.3f}"
    )
    path = draw_match(query, gallery, match, title=title, out=Path(out))
    return Explanation(path, top.class_name, match.inliers, top.score)
