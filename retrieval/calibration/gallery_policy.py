"""Choosing a gallery's decision policy (and its query expansion) on labelled val photos.

The val photos are searched exactly as a user's photo will be (:mod:`retrieval.serving.evidence`)
so the rule, calibrator and thresholds are chosen on the inputs they will meet.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from retrieval import neighbours
from retrieval.calibration.policy import choose_policy
from retrieval.data.records import ImageRecord
from retrieval.errors import InputError
from retrieval.rerank_tune import tune_gallery_qe
from retrieval.serving.decide import TARGET_ACCURACY, DecisionPolicy
from retrieval.serving.evidence import array_evidence, gallery_evidence
from retrieval.serving.expansion import GalleryExpansion
from retrieval.serving.gallery import now

if TYPE_CHECKING:
    from retrieval.local.features import ForegroundEstimate
    from retrieval.serving.gallery import Gallery


class EmbeddingGallery(Protocol):
    """What choosing an expansion needs of a workspace: its gallery, where that is saved, and
    an embedder for the val photos (a ``Workspace``; an ``OnnxWorkspace`` only reads a stored
    expansion). A protocol, so this module imports neither: the workspace imports this one."""

    gallery: Gallery
    workdir: Path  # whose writer lock a save of the gallery respects

    @property
    def gallery_root(self) -> Path: ...

    @property
    def foreground(self) -> ForegroundEstimate | None: ...

    def embed(self, records: list[ImageRecord], *, desc: str = ...) -> np.ndarray: ...


def val_queries(gallery: Gallery, records: list[ImageRecord]) -> list[ImageRecord]:
    """Val photos of individuals the gallery holds, and not in it (an enrolled val photo would
    find itself)."""
    in_gallery, live = gallery.live_paths(), gallery.live_classes()
    return [r for r in records if r.label in live and str(r.path) not in in_gallery]


def choose_gallery_policy(
    gallery: Gallery,
    embeddings: np.ndarray,
    truth: np.ndarray,
    *,
    expand: bool = False,
    target_accuracy: float = TARGET_ACCURACY,
) -> DecisionPolicy | None:
    """The policy for val ``embeddings`` (V, D) with classes ``truth`` (V,) searched in the
    gallery; None when val is too small to choose on (fewer than 2 photos)."""
    if len(truth) < 2 or gallery.size == 0:
        return None
    evidence, _ = gallery_evidence(gallery, embeddings, expand=expand, need_means=True)
    return choose_policy(evidence, truth, target_accuracy=target_accuracy)


CHECK_DROPPED = "; the new-individual check was dropped: re-run evaluate.py --open_set"


def set_gallery_policy(gallery: Gallery, policy: DecisionPolicy | None, *, why: str) -> str:
    """Store ``policy`` and log it in the history; returns a note when a new-individual check
    chosen for the old gallery was dropped (it belongs to the old calibrator)."""
    if policy is None:
        return ""
    note = ""
    if gallery.policy is not None and gallery.policy.unknown_min_confidence > 0:
        note = CHECK_DROPPED
    gallery.policy = policy
    gallery.history.append(
        {
            "event": "decision_policy",
            "why": why,
            "rule": policy.rule.describe(),
            "calibrator": policy.calibrator.describe(),
            "min_confidence": policy.min_confidence,
            "val_queries": policy.evidence.get("n_val_queries", 0),
            "time": now(),
        }
    )
    return note


def choose_expansion(
    val: np.ndarray, val_labels: np.ndarray, vectors: np.ndarray, labels: np.ndarray, n_classes
) -> GalleryExpansion:
    """(k, alpha) by the mAP of val queries (V, D) against the gallery vectors (G, D) (labels
    (V,) and (G,) int), then the decision policy chosen on the same expanded search."""
    tuned = tune_gallery_qe(val, val_labels, vectors, labels)
    queries, augmented = neighbours.expand_against_gallery(val, vectors, **tuned.params)
    evidence = array_evidence(queries, augmented, labels, n_classes, need_means=True)
    return GalleryExpansion(
        k=int(tuned.params["k"]),
        alpha=float(tuned.params["alpha"]),
        policy=choose_policy(evidence, val_labels),
        val_map=tuned.val_map,
        val_map_plain=tuned.val_map_plain,
    )


def ensure_expansion(
    ws: EmbeddingGallery, val_records: list[ImageRecord] | None
) -> GalleryExpansion:
    """The gallery's stored expansion, or one chosen on ``val_records`` now and saved with
    the gallery. ``val_records`` None: the caller cannot read the split (ONNX)."""
    gallery = ws.gallery
    if gallery.expansion is not None:
        return gallery.expansion
    if val_records is None:
        raise InputError(
            "--rerank qe: this gallery has no query expansion chosen yet, and --onnx cannot "
            "read the val split to choose one; run search.py or evaluate.py with --rerank qe "
            "once without --onnx"
        )
    known = val_queries(gallery, val_records)
    if len(known) < 2 or gallery.size < 2:
        raise InputError(
            f"--rerank qe chooses its neighbour count on the val split, which has {len(known)} "
            f"photo(s) of the gallery's {len(gallery.live_classes())} individuals; use "
            "--rerank none"
        )
    val = ws.embed(known, desc="val (query-expansion tuning)")
    val_labels = np.array([gallery.class_index(r.label) for r in known], dtype=np.int64)
    labels = gallery.labels_by_id[gallery.index.ids()]
    vectors = gallery.index.reconstruct_all()
    gallery.set_expansion(
        choose_expansion(val, val_labels, vectors, labels, len(gallery.class_names))
    )
    gallery.save_if_free(ws.gallery_root, ws.workdir)
    return gallery.expansion
