"""Answering "who is this?" for new photos (SPEC 5.2-5.3); the pairs mode is
:mod:`retrieval.pairs_query`.

Each image is reported on its own: a missing or unreadable file gets an error line while the
rest are still answered.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from retrieval.data.images import load_rgb
from retrieval.data.records import ImageRecord
from retrieval.data.scan import IMAGE_EXTENSIONS
from retrieval.decision import VOTE_TOP_N, Decision, vote_batch
from retrieval.errors import InputError
from retrieval.open_set import OpenSetCalibration

if TYPE_CHECKING:  # torch-free at run time: search.py --onnx passes an OnnxWorkspace
    from retrieval.gallery import GalleryHits
    from retrieval.onnx_embed import OnnxWorkspace
    from retrieval.workspace import Workspace


@dataclass(frozen=True)
class Match:
    path: str
    class_name: str
    distance: float  # L2 between unit embeddings, 0..2
    score: float  # cosine similarity


@dataclass(frozen=True)
class QueryAnswer:
    image: str
    matches: tuple[Match, ...] = ()
    decision: Decision | None = None
    class_name: str | None = None  # the voted class; None when rejected or on error
    error: str | None = None
    p_same: float | None = None  # calibrated P(top-1 match is this individual), if calibrated


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


def _readable(paths: list[Path]) -> tuple[list[Path], list[QueryAnswer]]:
    good, errors = [], []
    for path in paths:
        try:
            load_rgb(path)
            good.append(path)
        except InputError as err:
            errors.append(QueryAnswer(image=str(path), error=str(err)))
    return good, errors


def answer_images(
    ws: Workspace | OnnxWorkspace, inputs: list[str], *, top_k: int = 5, expand: bool = False
) -> list[QueryAnswer]:
    """Top-k matches and the voted decision for every image in ``inputs``; ``expand``: search
    with the gallery's stored query expansion (``retrieval.expansion``). The open-set check
    stays on the plain top-1 cosine, which is what it was calibrated on."""
    if top_k < 1:
        raise InputError(f"--top_k must be >= 1, got {top_k}")
    paths, errors = collect_images(inputs)
    paths, unreadable = _readable(paths)
    errors += unreadable
    if not paths:
        return errors
    records = [ImageRecord(path=p.resolve(), label="", group=p.stem) for p in paths]
    embeddings = ws.embed(records, desc="queries", progress=len(paths) > 16)
    hits = ws.gallery.search(embeddings, max(top_k, VOTE_TOP_N), expand=expand)
    names = ws.gallery.class_names
    decisions = vote_batch(
        hits.labels,
        hits.result.distances,
        top_n=VOTE_TOP_N,
        thresholds=ws.gallery.vote_thresholds(expand=expand),
        class_names=names,
    )
    decisions, p_same = _open_set_check(ws, embeddings, hits, decisions, expand=expand)
    answers = []
    for row, (path, decision) in enumerate(zip(paths, decisions, strict=True)):
        matches = tuple(
            Match(
                path=hits.paths[row][j],
                class_name=names[hits.labels[row, j]],
                distance=float(hits.result.distances[row, j]),
                score=float(hits.result.scores[row, j]),
            )
            for j in range(min(top_k, hits.labels.shape[1]))
            if hits.labels[row, j] >= 0
        )
        voted = names[decision.label] if decision.label is not None else None
        answers.append(QueryAnswer(str(path), matches, decision, voted, p_same=p_same[row]))
    return answers + errors


def _open_set_check(
    ws: Workspace | OnnxWorkspace,
    embeddings: np.ndarray,
    hits: GalleryHits,
    decisions: list[Decision],
    *,
    expand: bool,
) -> tuple[list[Decision], list[float | None]]:
    """With an open-set calibration (evaluate.py --open_set), reject probable new individuals
    and attach P(same individual); without one, decisions pass through unchanged. The check
    reads the plain top-1 cosine it was calibrated on: ``hits`` unless they were expanded."""
    if ws.gallery.open_set is None:
        return decisions, [None] * len(decisions)
    top1_scores = (ws.gallery.search(embeddings, 1) if expand else hits).result.scores[:, 0]
    calibration = OpenSetCalibration.from_dict(ws.gallery.open_set)
    accepted = calibration.accepts(top1_scores)
    out = []
    for decision, score, ok in zip(decisions, top1_scores, accepted, strict=True):
        if decision.label is not None and not ok:
            cut, far = calibration.threshold_score, calibration.target_false_accept_rate
            reason = (
                f"unknown individual: top-1 cosine {score:.3f} <= {cut:.3f} (open-set "
                f"threshold for a {far:.0%} false-accept rate); a new animal, or reshoot"
            )
            decision = replace(decision, label=None, reason=reason)
        out.append(decision)
    return out, [float(p) for p in calibration.probability(top1_scores)]
