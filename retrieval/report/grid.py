"""The retrieval grid figure: real queries beside their top-5 gallery matches.

Each tile is framed green (same class as the query) or red; a tile whose image cannot be
loaded becomes a grey "missing" placeholder instead of failing the whole report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from PIL import Image, ImageOps

from retrieval.report.png import DPI, save_png, short_label

MATCH_COLOUR = "#1a9641"  # gallery tile of the query's class
MISMATCH_COLOUR = "#d7191c"  # gallery tile of another class
QUERY_COLOUR = "#2b2b2b"  # frame of the query tile
PLACEHOLDER_GREY = (170, 170, 170)  # tile whose image could not be loaded
GRID_TOP_K = 5
THUMB_PX = 192  # grid images are scaled to fit this square (48 tiles of 480 px: ~33 MB)
_FRAME_PX, _GAP_PX, _TITLE_PX, _HEADER_PX = 6, 14, 30, 56  # grid mosaic layout, in pixels
_BOX_PX = THUMB_PX + 2 * _FRAME_PX
_BICUBIC = Image.Resampling.BICUBIC


def pick_grid_queries(top1_correct: np.ndarray, *, n_rows: int, seed: int) -> np.ndarray:
    """Which queries the retrieval grid shows: (R,) int64 indices, correct ones first.

    ``top1_correct``: (Q,) bool. When both kinds exist, about half the rows are top-1 mistakes
    (the interesting ones) and the rest successes; a short kind is topped up by the other.
    """
    top1_correct = np.asarray(top1_correct, dtype=bool)
    rng = np.random.default_rng(seed)
    right, wrong = np.flatnonzero(top1_correct), np.flatnonzero(~top1_correct)
    n_rows = min(int(n_rows), top1_correct.size)
    n_wrong = min(wrong.size, max(n_rows - right.size, (n_rows + 1) // 2))
    n_right = n_rows - n_wrong
    picked_right = np.sort(rng.choice(right, n_right, replace=False))
    picked_wrong = np.sort(rng.choice(wrong, n_wrong, replace=False))
    return np.concatenate([picked_right, picked_wrong]).astype(np.int64)


def _thumbnail(path: str, loader: Callable[[Path], Image.Image]) -> np.ndarray | None:
    """(h, w, 3) uint8 image scaled to fit THUMB_PX square, or None when it cannot be loaded."""
    try:
        im = loader(Path(path))
    except Exception:  # any reader error: the grid shows a placeholder instead of failing
        return None
    return np.asarray(ImageOps.contain(im.convert("RGB"), (THUMB_PX, THUMB_PX), _BICUBIC))


def _cell_origin(row: int, col: int) -> tuple[int, int]:
    """Top-left pixel (x, y) of a framed cell in the grid mosaic; the query column stands apart."""
    x = _GAP_PX + col * (_BOX_PX + _GAP_PX) + (2 * _GAP_PX if col else 0)
    y = _HEADER_PX + row * (_TITLE_PX + _BOX_PX + _GAP_PX) + _TITLE_PX
    return x, y


def _paint_cell(
    canvas: np.ndarray, ax: Axes, row: int, col: int, pixels: np.ndarray | None, frame: str
) -> None:
    """Frame of colour ``frame`` around the centred image, or a grey "missing" placeholder.

    canvas: (H, W, 3) uint8 mosaic, painted in place; ``ax`` receives the placeholder's text.
    """
    x, y = _cell_origin(row, col)
    canvas[y : y + _BOX_PX, x : x + _BOX_PX] = np.round(np.array(to_rgb(frame)) * 255)
    inner = canvas[y + _FRAME_PX : y + _BOX_PX - _FRAME_PX, x + _FRAME_PX : x + _BOX_PX - _FRAME_PX]
    if pixels is None:
        inner[:] = PLACEHOLDER_GREY
        ax.text(x + _BOX_PX / 2, y + _BOX_PX / 2, "missing", ha="center", va="center")
        return
    inner[:] = 255
    h, w = pixels.shape[:2]
    top, left = (THUMB_PX - h) // 2, (THUMB_PX - w) // 2
    inner[top : top + h, left : left + w] = pixels


def retrieval_grid(
    path: Path,
    *,
    split: str,
    rows: np.ndarray,
    query_labels: np.ndarray,
    class_names: list[str],
    query_paths: Sequence[str],
    top_paths: Sequence[Sequence[str]],
    top_labels: np.ndarray,
    image_loader: Callable[[Path], Image.Image],
    top_inliers: np.ndarray | None = None,
) -> Path:
    """One row per picked query: the query, then its top-5 framed green (same class) or red,
    each with its verified keypoint matches where local matching re-scored them.

    The tiles are painted into one pixel mosaic placed 1:1 on the figure, with the texts in
    one invisible axes: 48 matplotlib axes would take seconds to lay out and draw.
    """
    width = _cell_origin(0, GRID_TOP_K)[0] + _BOX_PX + _GAP_PX
    height = _cell_origin(max(len(rows), 1) - 1, 0)[1] + _BOX_PX + _GAP_PX
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)  # (H, W, 3) uint8
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    title = f"{split}: queries (left) and their top-{GRID_TOP_K} gallery matches\n"
    title += "frame: green = same class as the query, red = another class"
    ax.text(width / 2, _HEADER_PX / 2, title, ha="center", va="center", fontsize=12)
    if len(rows) == 0:
        ax.text(width / 2, _HEADER_PX + _BOX_PX / 2, "no queries", ha="center", size=14)
    for r, q in enumerate(rows):
        truth = int(query_labels[q])
        verdict = "right" if top_labels.shape[1] and top_labels[q, 0] == truth else "wrong"
        texts = [(f"query: {short_label(class_names[truth], 22)}\n(top-1 {verdict})", "black")]
        _paint_cell(canvas, ax, r, 0, _thumbnail(query_paths[q], image_loader), QUERY_COLOUR)
        for k in range(GRID_TOP_K):
            label = int(top_labels[q, k]) if k < top_labels.shape[1] else -1
            if label < 0 or k >= len(top_paths[q]):  # fewer than 5 neighbours in the gallery
                x, y = _cell_origin(r, 1 + k)
                ax.text(x + _BOX_PX / 2, y + _BOX_PX / 2, "no match", ha="center", color="grey")
                texts.append(("", "grey"))
                continue
            colour = MATCH_COLOUR if label == truth else MISMATCH_COLOUR
            _paint_cell(canvas, ax, r, 1 + k, _thumbnail(top_paths[q][k], image_loader), colour)
            text = f"#{k + 1} {short_label(class_names[label], 24)}"
            if top_inliers is not None and top_inliers[q, k] >= 0:
                text += f"\n{int(top_inliers[q, k])} inliers"
            texts.append((text, colour))
        for col, (text, colour) in enumerate(texts):
            x, y = _cell_origin(r, col)
            ax.text(x + _BOX_PX / 2, y - 4, text, ha="center", va="bottom", size=8, color=colour)
    fig.figimage(canvas, origin="upper", zorder=-1)  # pixels 1:1, under the texts
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)  # axes coordinates = mosaic pixels, y down, for the texts
    ax.set_axis_off()
    return save_png(fig, path, tight=False)
