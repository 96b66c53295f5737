"""The pictures the page shows: thumbnails of photos (cached as small JPEGs) and the query
beside a candidate with the verified keypoint matches drawn (``retrieval.report.explain``)."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

from retrieval.data.images import load_rgb
from retrieval.io import atomic_path
from retrieval.local.features import ForegroundEstimate
from retrieval.query import QueryAnswer
from retrieval.report.explain import explain_answer, matching_settings
from retrieval.serving.fusion import Fusion

THUMB_PX = 256  # longer side of a thumbnail
THUMBS = Path("review") / "thumbs"  # under the workdir
EXPLAINED = Path("review") / "explained"


def thumbnail(photo: Path, workdir: Path) -> Path:
    """A JPEG of ``photo`` at most THUMB_PX on its longer side, made once per file version."""
    stat = Path(photo).stat()
    key = hashlib.sha256(f"{photo}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    path = Path(workdir) / THUMBS / f"{key[:32]}.jpg"
    if not path.is_file():
        image = load_rgb(Path(photo))
        image.thumbnail((THUMB_PX, THUMB_PX))
        with atomic_path(path) as tmp:
            image.save(tmp, format="JPEG", quality=85)
    return path


def explained(
    answer: QueryAnswer,
    rank: int,
    workdir: Path,
    fusion: Fusion | None,
    foreground: ForegroundEstimate | None = None,
) -> Path:
    """The query beside its ``rank``-th match (0: best), verified keypoint matches drawn with
    the settings the gallery's local matching uses (``foreground``: the workspace's estimate,
    for a fusion that keeps keypoints on it); drawn once per answer and rank."""
    match = answer.matches[rank]
    key = hashlib.sha256(f"{answer.image}:{match.path}".encode()).hexdigest()[:32]
    path = Path(workdir) / EXPLAINED / f"{key}.png"
    if not path.is_file():
        settings, geometry = matching_settings(fusion)
        one = replace(answer, matches=(match,))
        explain_answer(one, path, settings=settings, geometry=geometry, foreground=foreground)
    return path
