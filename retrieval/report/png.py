"""Saving a figure as PNG without pyplot, atomically, and labels short enough for their tiles."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from retrieval.io import atomic_path

DPI = 100


def save_png(fig: Figure, path: Path, *, tight: bool = True) -> Path:
    """Write ``fig`` to ``path`` atomically (temporary file in the same folder, then replace).

    ``tight`` crops to the drawn content (long tick labels, outside legends); the grid, laid out
    in pixels, is saved at exactly its size.
    """
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight" if tight else None)
    return path


def short_label(name: str, max_chars: int) -> str:
    """``name`` cut to ``max_chars`` with an ellipsis, so long IDs do not overlap their tiles."""
    return name if len(name) <= max_chars else name[: max_chars - 1] + "…"
