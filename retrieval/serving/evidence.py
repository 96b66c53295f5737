"""One search per query, turned into the evidence every rule reads (``rules.QueryEvidence``).

The same builder serves a saved gallery (photo search, evaluate, pairs) and plain arrays (the
open-set simulation, which searches a gallery with some individuals held out), so every caller
decides on identical inputs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from retrieval.serving.classes import class_means, class_sizes, mean_scores
from retrieval.serving.decide import Decision, DecisionPolicy, decide
from retrieval.serving.index import FlatIndex
from retrieval.serving.rules import QueryEvidence

if TYPE_CHECKING:
    from retrieval.serving.gallery import Gallery, GalleryHits

EVIDENCE_K = 50  # gallery hits each decision reads: the longest vote among the candidates


def gallery_evidence(
    gallery: Gallery,
    queries: np.ndarray,
    *,
    k: int = EVIDENCE_K,
    expand: bool = False,
    need_means: bool = False,
) -> tuple[QueryEvidence, GalleryHits]:
    """Search ``queries`` (Q, D) unit rows once (``expand``: with the stored query expansion)
    and return the evidence with the hits it came from (for display). ``need_means``: add the
    class-mean cosines (the mean rules read them)."""
    queries, index = gallery.search_space(queries, expand=expand)
    hits = gallery.label_hits(index.search(queries, k))
    sizes = class_sizes(gallery.labels_by_id, len(gallery.class_names))
    means = None
    if need_means:
        means = mean_scores(queries, gallery.class_means(expand=expand), sizes)
    return QueryEvidence(hits.result.scores, hits.labels, sizes, means), hits


class GalleryAnswers(NamedTuple):
    """What a search of the gallery decided: one decision per query, the hits it read, and
    the policy it applied."""

    decisions: list[Decision]
    hits: GalleryHits
    policy: DecisionPolicy


def decide_in_gallery(
    gallery: Gallery, queries: np.ndarray, *, k: int = EVIDENCE_K, expand: bool = False
) -> GalleryAnswers:
    """Search ``queries`` (Q, D) unit rows and decide each under the gallery's stored policy
    for this kind of search: what photo search, evaluate and the enrol check all do."""
    policy = gallery.policy_for(expand=expand)
    evidence, hits = gallery_evidence(
        gallery, queries, k=k, expand=expand, need_means=policy.rule.needs_means
    )
    return GalleryAnswers(decide(evidence, policy, class_names=gallery.class_names), hits, policy)


def array_evidence(
    queries: np.ndarray,
    vectors: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    *,
    k: int = EVIDENCE_K,
    need_means: bool = False,
) -> QueryEvidence:
    """The evidence of ``queries`` (Q, D) against a gallery given as arrays: vectors (G, D)
    float32 unit rows and labels (G,) int64. Exact search (:class:`FlatIndex`)."""
    index = FlatIndex(vectors.shape[1], use_gpu=False)
    index.add_with_ids(vectors, np.arange(len(labels), dtype=np.int64))
    result = index.search(queries, k)
    hit_labels = np.where(result.indices >= 0, labels[np.clip(result.indices, 0, None)], -1)
    sizes = class_sizes(labels, n_classes)
    means = None
    if need_means:
        means = mean_scores(queries, class_means(vectors, labels, n_classes), sizes)
    return QueryEvidence(result.scores, hit_labels.astype(np.int64), sizes, means)
