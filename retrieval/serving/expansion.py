"""Query expansion for photo searches: DBA of the gallery plus alpha-QE of each query, with
the neighbour count chosen on the val split and stored with the gallery (``--rerank qe``).

Why: on a trained model a gallery photo's nearest other photos are mostly the same individual,
so averaging both sides with their neighbours sharpens each class (dogfacenet, 200 dogs:
Recall@1 0.897 -> 0.926 and 0.887 -> 0.907 on two seeds). On a weak model the neighbours are
as often another individual and the same averaging costs Recall@1 (frozen floor: 0.858 ->
0.828), so "no expansion" is one of the candidates val chooses between. The expanded cosines
are not the plain ones, so the decision policy is chosen again on the expanded val queries and
stored beside (k, alpha). Choosing them is :mod:`retrieval.calibration.expansion_choice`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retrieval import neighbours
from retrieval.serving.decide import DecisionPolicy


@dataclass(frozen=True)
class GalleryExpansion:
    """(k, alpha) of DBA + alpha-QE and the decision policy chosen with them."""

    k: int  # neighbours averaged in on each side; 0: val chose plain cosine
    alpha: float  # neighbour weight max(cos, 0)^alpha
    policy: DecisionPolicy | None = None
    val_map: float = float("nan")  # val queries against the gallery, with the expansion
    val_map_plain: float = float("nan")  # the same with plain cosine

    def to_dict(self) -> dict:
        return {
            "k": self.k,
            "alpha": self.alpha,
            "decision": None if self.policy is None else self.policy.to_dict(),
            "val_map": self.val_map,
            "val_map_plain": self.val_map_plain,
        }

    @classmethod
    def from_dict(cls, data: dict) -> GalleryExpansion:
        return cls(
            k=int(data["k"]),
            alpha=float(data["alpha"]),
            policy=None if data["decision"] is None else DecisionPolicy.from_dict(data["decision"]),
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
