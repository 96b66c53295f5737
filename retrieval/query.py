"""Answering "who is this?" for new photos, and scoring Kaggle-style image pairs (SPEC 5).

Each image is reported on its own: a missing or unreadable file gets an error line while the
rest are still answered.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from retrieval import class_prior
from retrieval.data.images import load_rgb
from retrieval.data.records import ImageRecord, labels_of
from retrieval.data.scan import IMAGE_EXTENSIONS
from retrieval.decision import VOTE_TOP_N, Decision, vote_batch
from retrieval.errors import InputError
from retrieval.neighbours import top_k_cosine
from retrieval.open_set import OpenSetCalibration
from retrieval.pairs import (
    distinct_images,
    missing_images,
    pair_rows,
    read_pairs,
    score_pairs,
    score_pairs_from_matrix,
    write_submission,
)
from retrieval.rerank import rerank_similarity_matrix
from retrieval.rerank_tune import TunedRerank, tune_rerank

if TYPE_CHECKING:  # torch-free at run time: search.py --onnx passes an OnnxWorkspace
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
    ws: Workspace | OnnxWorkspace, inputs: list[str], *, top_k: int = 5
) -> list[QueryAnswer]:
    """Top-k matches and the voted decision for every image in ``inputs``."""
    if top_k < 1:
        raise InputError(f"--top_k must be >= 1, got {top_k}")
    paths, errors = collect_images(inputs)
    paths, unreadable = _readable(paths)
    errors += unreadable
    if not paths:
        return errors
    records = [ImageRecord(path=p.resolve(), label="", group=p.stem) for p in paths]
    embeddings = ws.embed(records, desc="queries", progress=len(paths) > 16)
    hits = ws.gallery.search(embeddings, max(top_k, VOTE_TOP_N))
    names = ws.gallery.class_names
    decisions = vote_batch(
        hits.labels,
        hits.result.distances,
        top_n=VOTE_TOP_N,
        thresholds=ws.gallery.thresholds,
        class_names=names,
    )
    decisions, p_same = _open_set_check(ws, hits.result.scores[:, 0], decisions)
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
    ws: Workspace | OnnxWorkspace, top1_scores: np.ndarray, decisions: list[Decision]
) -> tuple[list[Decision], list[float | None]]:
    """With an open-set calibration (evaluate.py --open_set), reject probable new individuals
    and attach P(same individual); without one, decisions pass through unchanged."""
    if ws.gallery.open_set is None:
        return decisions, [None] * len(decisions)
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


@dataclass(frozen=True)
class PairsSummary:
    rows: int
    images: int
    embed_seconds: float
    score_seconds: float


def score_pairs_file(
    ws: Workspace | OnnxWorkspace,
    pairs_csv: Path,
    images_dir: Path,
    out: Path,
    *,
    rerank: str = "none",
    rerank_params: dict | None = None,
    closed_set: ClosedSetPrior | None = None,
) -> PairsSummary:
    """Kaggle Jaguar Re-ID submission: ``row_id,similarity`` for every input row, in order.

    ``rerank``: "qe" (alpha query expansion) or "kr" (k-reciprocal) re-scores the test-vs-test
    similarity matrix of the distinct images before the pairs are read off it, with
    ``rerank_params`` (see ``tune_rerank_on_val``; None: the method's defaults).
    ``closed_set``: the pairs show individuals of the gallery; each score is blended with the
    agreement of the two images' class posteriors from the gallery and the prior's voters
    (``retrieval.class_prior``; see ``tune_closed_set_on_val``).
    """
    pairs = read_pairs(pairs_csv)
    names = distinct_images(pairs)
    missing = missing_images(names, images_dir)
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise InputError(
            f"{len(missing)} image(s) named in {pairs_csv} are not in {images_dir}: {shown}; "
            "pass the folder that holds them with --images"
        )
    records = [ImageRecord(path=(images_dir / n).resolve(), label="", group=n) for n in names]
    started = time.perf_counter()
    embeddings = ws.embed(records, desc="pair images")
    embedded = time.perf_counter()
    if rerank == "none":
        similarity = score_pairs(pairs, names, embeddings)
    else:
        matrix = rerank_similarity_matrix(embeddings, method=rerank, **(rerank_params or {}))
        similarity = score_pairs_from_matrix(pairs, names, matrix)
    if closed_set is not None:
        agreed = _gallery_agreement(ws, embeddings, closed_set, pairs, names)
        similarity = class_prior.blend(similarity, agreed, closed_set.params["weight"])
    write_submission(out, pairs["row_id"].tolist(), np.asarray(similarity))
    return PairsSummary(len(pairs), len(names), embedded - started, time.perf_counter() - embedded)


def tune_rerank_on_val(ws: Workspace, method: str) -> TunedRerank:
    """Re-ranking parameters chosen on the val split of the checkpoint's own data.

    The val split is scored against itself, as the pairs mode scores the test set; when no
    individual has two val photos, train + val is the set instead.
    """
    from retrieval.workspace import prepare_for  # torch: not on the ONNX path

    prepared = prepare_for(ws.loaded, ws.workdir, data=None, image_root=None)
    known = [r for r in prepared.val if r.label in ws.loaded.class_to_idx]
    if len({r.label for r in known}) == len(known):
        known = [*prepared.train, *known]
    if len(known) < 3:
        raise InputError(
            f"--rerank {method}: the val split has {len(known)} usable images, too few to "
            "choose re-ranking parameters; use --rerank none"
        )
    embeddings = ws.embed(known, desc="val (re-ranking tuning)")
    return tune_rerank(embeddings, labels_of(known, ws.loaded.class_to_idx), method)


@dataclass(frozen=True)
class ClosedSetPrior:
    """What ``--closed_set`` scores pairs with (``retrieval.class_prior``).

    voters: labelled photos that vote beside the gallery, the val split once it has chosen
    the weight (its photos show the same individuals and were held out only for choosing):
    embeddings (V, D) float32 unit rows and labels (V,) int64 gallery class indices.
    """

    params: dict
    val_map: float = float("nan")  # NaN: not tuned (no individual twice in val, or ONNX)
    val_map_plain: float = float("nan")
    voter_embeddings: np.ndarray | None = None
    voter_labels: np.ndarray | None = None


def _gallery_hits(
    ws: Workspace | OnnxWorkspace, embeddings: np.ndarray, prior: ClosedSetPrior | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top class_prior.TOP_K labelled hits per row (the gallery, plus the prior's voters):
    scores (N, k), labels (N, k)."""
    if ws.gallery.size == 0:
        raise InputError(
            "--closed_set scores pairs by the gallery's labelled photos, and the gallery is "
            "empty; enroll photos (search.py --enroll) or rebuild it (--rebuild_gallery)"
        )
    hits = ws.gallery.search(embeddings, class_prior.TOP_K)
    scores, labels = hits.result.scores, hits.labels
    if prior is not None and prior.voter_embeddings is not None:
        k = min(class_prior.TOP_K, len(prior.voter_labels))
        more, rows = top_k_cosine(embeddings, prior.voter_embeddings, k)
        scores, labels = class_prior.merge_hits(scores, labels, more, prior.voter_labels[rows])
    return scores, labels


def _gallery_agreement(
    ws: Workspace | OnnxWorkspace, embeddings: np.ndarray, prior: ClosedSetPrior, pairs, names
) -> np.ndarray:
    """p_query . p_gallery_image for every pair: (n_pairs,) float32."""
    scores, labels = _gallery_hits(ws, embeddings, prior)
    posterior = class_prior.class_posterior(scores, labels, prior.params["temperature"])
    return class_prior.agreement(posterior, *pair_rows(pairs, names, len(names)))


def tune_closed_set_on_val(
    ws: Workspace, rerank: str = "none", rerank_params: dict | None = None
) -> ClosedSetPrior:
    """The closed-set weight chosen on the val split, scored against itself after the same
    re-ranking with posteriors from the gallery (train photos: val never votes for itself);
    then val joins the voters. With no individual twice in val there is nothing to score:
    the defaults come back, untuned.
    """
    from retrieval.workspace import prepare_for  # torch: not on the ONNX path

    prepared = prepare_for(ws.loaded, ws.workdir, data=None, image_root=None)
    in_gallery = ws.gallery.live_paths()
    known = [
        r
        for r in prepared.val
        if r.label in ws.gallery.class_names and str(r.path) not in in_gallery
    ]
    if not known:
        return ClosedSetPrior(dict(class_prior.DEFAULT_PARAMS))
    embeddings = ws.embed(known, desc="val (closed-set tuning)")
    labels = np.array([ws.gallery.class_index(r.label) for r in known], dtype=np.int64)
    if len(np.unique(labels)) == len(labels):
        return ClosedSetPrior(
            dict(class_prior.DEFAULT_PARAMS), voter_embeddings=embeddings, voter_labels=labels
        )
    similarity = rerank_similarity_matrix(embeddings, method=rerank, **(rerank_params or {}))
    tuned = class_prior.tune_prior(similarity, *_gallery_hits(ws, embeddings), labels)
    return ClosedSetPrior(tuned.params, tuned.val_map, tuned.val_map_plain, embeddings, labels)
