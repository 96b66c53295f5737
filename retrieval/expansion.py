"""Query expansion for photo searches: DBA of the gallery plus alpha-QE of each query, with
the neighbour count chosen on the val split and stored with the gallery (``--rerank qe``).

Why: on a trained model a gallery photo's nearest other photos are mostly the same individual,
so averaging both sides with their neighbours sharpens each class (dogfacenet, 200 dogs:
Recall@1 0.897 -> 0.926 and 0.887 -> 0.907 on two seeds). On a weak model the neighbours are
as often another individual and the same averaging costs Recall@1 (frozen floor: 0.858 ->
0.828), so "no expansion" is one of the candidates val chooses between. The expanded cosines
are not the plain ones, so the vote's reject thresholds are calibrated again on the expanded
val queries and stored beside (k, alpha).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from retrieval import neighbours
from retrieval.data.records import ImageRecord
from retrieval.decision import TARGET_ACCURACY, VOTE_TOP_N, Thresholds, calibrate_thresholds
from retrieval.errors import InputError
from retrieval.rerank_tune import tune_gallery_qe

if TYPE_CHECKING:  # torch-free at run time: search.py --onnx passes an OnnxWorkspace
    from retrieval.onnx_embed import OnnxWorkspace
    from retrieval.workspace import Workspace


@dataclass(frozen=True)
class GalleryExpansion:
    """(k, alpha) of DBA + alpha-QE and the vote thresholds calibrated with them."""

    k: int  # neighbours averaged in on each side; 0: val chose plain cosine
    alpha: float  # neighbour weight max(cos, 0)^alpha
    thresholds: Thresholds = field(default_factory=Thresholds)
    val_map: float = float("nan")  # val queries against the gallery, with the expansion
    val_map_plain: float = float("nan")  # the same with plain cosine

    def to_dict(self) -> dict:
        return {
            "k": self.k,
            "alpha": self.alpha,
            "thresholds": self.thresholds.to_dict(),
            "val_map": self.val_map,
            "val_map_plain": self.val_map_plain,
        }

    @classmethod
    def from_dict(cls, data: dict) -> GalleryExpansion:
        return cls(
            k=int(data["k"]),
            alpha=float(data["alpha"]),
            thresholds=Thresholds.from_dict(data["thresholds"]),
            val_map=float(data["val_map"]),
            val_map_plain=float(data["val_map_plain"]),
        )

    def describe(self) -> str:
        """One line for the CLI: what val chose and what it measured."""
        chosen = (
            "plain cosine (no expansion)" if self.k == 0 else f"k={self.k}, alpha={self.alpha:g}"
        )
        return (
            f"--rerank qe: {chosen}, chosen on val (mAP {self.val_map:.3f}, "
            f"{self.val_map_plain:.3f} without expansion)"
        )


def augment_gallery(vectors: np.ndarray, expansion: GalleryExpansion) -> np.ndarray:
    """DBA of the stored vectors (G, D) -> (G, D) float32 unit rows; k is capped at G - 1, as a
    gallery may shrink below the k val chose (``search.py --remove``)."""
    k = min(expansion.k, max(vectors.shape[0] - 1, 0))
    return neighbours.database_augmentation(vectors, k=k, alpha=expansion.alpha)


def expand_queries(
    queries: np.ndarray, augmented: np.ndarray, expansion: GalleryExpansion
) -> np.ndarray:
    """Alpha-QE of queries (Q, D) against the augmented gallery (G, D): (Q, D) unit rows."""
    k = min(expansion.k, augmented.shape[0])
    return neighbours.alpha_query_expansion(queries, augmented, k=k, alpha=expansion.alpha)


def choose_expansion(
    val: np.ndarray, val_labels: np.ndarray, vectors: np.ndarray, labels: np.ndarray
) -> GalleryExpansion:
    """(k, alpha) by the mAP of val queries (V, D) against the gallery vectors (G, D) (labels
    (V,) and (G,) int), then the reject thresholds calibrated on the same expanded search."""
    tuned = tune_gallery_qe(val, val_labels, vectors, labels)
    queries, augmented = neighbours.expand_against_gallery(val, vectors, **tuned.params)
    scores, rows = neighbours.top_k_cosine(queries, augmented, min(VOTE_TOP_N, augmented.shape[0]))
    distances = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * scores))
    calibration = calibrate_thresholds(
        labels[rows], distances, val_labels, target_accuracy=TARGET_ACCURACY, top_n=VOTE_TOP_N
    )
    return GalleryExpansion(
        k=int(tuned.params["k"]),
        alpha=float(tuned.params["alpha"]),
        thresholds=calibration.thresholds,
        val_map=tuned.val_map,
        val_map_plain=tuned.val_map_plain,
    )


def ensure_expansion(
    ws: Workspace | OnnxWorkspace, val_records: list[ImageRecord] | None
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
    in_gallery, live = gallery.live_paths(), gallery.live_classes()
    known = [r for r in val_records if r.label in live and str(r.path) not in in_gallery]
    if len(known) < 2 or gallery.size < 2:
        raise InputError(
            f"--rerank qe chooses its neighbour count on the val split, which has {len(known)} "
            f"photo(s) of the gallery's {len(live)} individuals; use --rerank none"
        )
    val = ws.embed(known, desc="val (query-expansion tuning)")
    val_labels = np.array([gallery.class_index(r.label) for r in known], dtype=np.int64)
    labels = gallery.labels_by_id[gallery.index.ids()]
    gallery.set_expansion(
        choose_expansion(val, val_labels, gallery.index.reconstruct_all(), labels)
    )
    gallery.save(ws.gallery_root)
    return gallery.expansion
