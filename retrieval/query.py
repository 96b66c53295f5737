"""Answering "who is this?" for new photos (SPEC 5.2-5.3); the pairs mode is
:mod:`retrieval.pairs_query`.

Each image is reported on its own: a missing or unreadable file gets an error line while the
rest are still answered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from retrieval.data.images import image_size, load_rgb
from retrieval.data.records import ImageRecord
from retrieval.data.scan import IMAGE_EXTENSIONS
from retrieval.errors import InputError
from retrieval.serving.decide import Decision
from retrieval.serving.evidence import EVIDENCE_K, decide_in_gallery
from retrieval.serving.local_scores import LocalQueries

if TYPE_CHECKING:  # torch-free at run time: search.py --onnx passes an OnnxWorkspace
    from retrieval.onnx_embed import OnnxWorkspace
    from retrieval.workspace import Workspace


@dataclass(frozen=True)
class Match:
    path: str
    class_name: str
    distance: float  # L2 between unit embeddings, 0..2
    score: float  # cosine similarity
    inliers: int | None = None  # verified keypoint matches, where local matching ran


@dataclass(frozen=True)
class QueryAnswer:
    """One photo's answer. class_name: the accepted individual (None when rejected or on
    error); predicted_name: the rule's best candidate even when rejected; rule: what decided."""

    image: str
    matches: tuple[Match, ...] = ()
    decision: Decision | None = None
    class_name: str | None = None
    predicted_name: str | None = None
    runner_up_name: str | None = None
    rule: str = ""
    error: str | None = None


def collect_images(inputs: list[str]) -> tuple[list[Path], list[QueryAnswer]]:
    """Expand folders (recursively, image files only); missing inputs become error answers."""
    found: list[Path] = []
    errors: list[QueryAnswer] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in IMAGE_EXTENSIONS
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        elif path.is_file():
            found.append(path)
        else:
            errors.append(QueryAnswer(image=item, error="file not found"))
    return found, errors


def _readable(paths: list[Path], *, decode: bool) -> tuple[list[Path], list[QueryAnswer]]:
    """Split off files that are not images. ``decode=False`` reads headers only (cheap: the
    pixels are decoded once, by the embedding); ``decode=True`` decodes each file, to find a
    truncated one after the embedding failed on it."""
    good, errors = [], []
    for path in paths:
        try:
            load_rgb(path) if decode else image_size(path)
            good.append(path)
        except InputError as err:
            errors.append(QueryAnswer(image=str(path), error=str(err)))
    return good, errors


def _embed_once(
    ws: Workspace | OnnxWorkspace, paths: list[Path]
) -> tuple[list[Path], np.ndarray, list[QueryAnswer]]:
    """Embed the photos, each decoded once; when one turns out truncated, it is reported and
    the rest embedded again. Returns the embedded paths, (N, D) embeddings and error answers."""
    paths, errors = _readable(paths, decode=False)
    if not paths:
        return [], np.zeros((0, 0), dtype=np.float32), errors
    records = [ImageRecord(path=p.resolve(), label="", group=p.stem) for p in paths]
    try:
        return paths, ws.embed(records, desc="queries", progress=len(paths) > 16), errors
    except (InputError, RuntimeError):  # a loader worker wraps UnreadableImage in RuntimeError
        paths, truncated = _readable(paths, decode=True)
        if not truncated:
            raise  # not a photo's fault
        records = [ImageRecord(path=p.resolve(), label="", group=p.stem) for p in paths]
        embeddings = ws.embed(records, desc="queries", progress=len(paths) > 16)
        return paths, embeddings, errors + truncated


def answer_images(
    ws: Workspace | OnnxWorkspace,
    inputs: list[str],
    *,
    top_k: int = 5,
    expand: bool = False,
    local: Callable[[list[str]], LocalQueries | None] | None = None,
) -> list[QueryAnswer]:
    """Top-k matches and the decision for every image in ``inputs``; ``expand``: search with
    the gallery's stored query expansion (``retrieval.serving.expansion``) and its own policy;
    ``local``: given the readable photos, what local matching re-scores them with (or None)."""
    if top_k < 1:
        raise InputError(f"--top_k must be >= 1, got {top_k}")
    paths, errors = collect_images(inputs)
    paths, embeddings, unreadable = _embed_once(ws, paths)
    errors += unreadable
    if not paths:
        return errors
    decisions, hits, policy, inliers = decide_in_gallery(
        ws.gallery,
        embeddings,
        k=max(top_k, EVIDENCE_K),
        expand=expand,
        local=None if local is None else local([str(p) for p in paths]),
    )
    names = ws.gallery.class_names
    answers = []
    for row, (path, decision) in enumerate(zip(paths, decisions, strict=True)):
        matches = tuple(
            Match(
                path=hits.paths[row][j],
                class_name=names[hits.labels[row, j]],
                distance=float(hits.result.distances[row, j]),
                score=float(hits.result.scores[row, j]),
                inliers=None if inliers is None or inliers[row, j] < 0 else int(inliers[row, j]),
            )
            for j in range(min(top_k, hits.labels.shape[1]))
            if hits.labels[row, j] >= 0
        )
        answers.append(
            QueryAnswer(
                str(path),
                matches,
                decision,
                class_name=names[decision.label] if decision.accepted else None,
                predicted_name=names[decision.predicted] if decision.predicted >= 0 else None,
                runner_up_name=names[decision.runner_up] if decision.runner_up >= 0 else None,
                rule=policy.rule.describe(),
            )
        )
    return answers + errors
