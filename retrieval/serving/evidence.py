"""One search per query, turned into the evidence every rule reads (``rules.QueryEvidence``).

The same builder serves a saved gallery (photo search, evaluate, pairs) and plain arrays (the
open-set simulation, which searches a gallery with some individuals held out), so every caller
decides on identical inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from retrieval.serving.classes import class_means, class_sizes, mean_scores
from retrieval.serving.decide import Decision, DecisionPolicy, decide
from retrieval.serving.fusion import Fusion, fused_evidence, fused_order
from retrieval.serving.index import FlatIndex, SearchResult
from retrieval.serving.local_scores import LocalQueries
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
    hits: GalleryHits  # best first: by fused score where local matching re-scored them
    policy: DecisionPolicy
    inliers: np.ndarray | None = None  # (Q, k) int32 beside the hits, -1 = not matched


def decide_in_gallery(
    gallery: Gallery,
    queries: np.ndarray,
    *,
    k: int = EVIDENCE_K,
    expand: bool = False,
    local: LocalQueries | None = None,
) -> GalleryAnswers:
    """Search ``queries`` (Q, D) unit rows and decide each under the gallery's stored policy
    for this kind of search: what photo search, evaluate and the enrol check all do.
    ``local``: the query photos, so that the gallery's local-match fusion re-scores each
    shortlist before the decision (the caller passes it where ``--local_match`` says so)."""
    fusion = gallery.fusion if local is not None and not expand else None
    if fusion is None:
        policy = gallery.policy_for(expand=expand)
        evidence, hits = gallery_evidence(
            gallery, queries, k=k, expand=expand, need_means=policy.rule.needs_means
        )
        decisions = decide(evidence, policy, class_names=gallery.class_names)
        return GalleryAnswers(decisions, hits, policy)
    assert local is not None and fusion.policy is not None
    policy = fusion.policy
    evidence, hits = gallery_evidence(gallery, queries, k=k, need_means=policy.rule.needs_means)
    fused = rescore_locally(evidence, hits.paths, fusion, local)
    decisions = decide(
        fused.evidence, policy, class_names=gallery.class_names, score_name="fused score"
    )
    matched = np.full(hits.labels.shape, -1, np.int32)
    matched[:, : fused.inliers.shape[1]] = fused.inliers
    return GalleryAnswers(
        decisions,
        reorder_hits(hits, fused.order),
        policy,
        np.take_along_axis(matched, fused.order, axis=1),
    )


class LocalRescore(NamedTuple):
    """Global evidence re-scored by local matches: the fused evidence, the order (Q, k) int64
    of its hits among the global ones, and the inliers (Q, B) int32 of the first B global
    hits."""

    evidence: QueryEvidence
    order: np.ndarray
    inliers: np.ndarray


def rescore_locally(
    evidence: QueryEvidence, hit_paths: Sequence[Sequence[str]], fusion: Fusion, local: LocalQueries
) -> LocalRescore:
    """Match each query photo with its shortlist and put every hit on the fused scale: the one
    way a gallery search (photo search, evaluate) and the open-set simulation (a gallery with
    individuals held out) read local matches. ``hit_paths``: per query, the gallery photo of
    each hit of ``evidence``, best first ("" = no hit)."""
    scorer = local.scorer(fusion)
    inliers = scorer.inliers(scorer.query_features(local.paths), hit_paths, fusion.shortlist)
    scores, order = fused_order(fusion, evidence.hit_scores, inliers, evidence.hit_labels)
    return LocalRescore(fused_evidence(evidence, scores, order), order, inliers)


def reorder_hits(hits: GalleryHits, order: np.ndarray) -> GalleryHits:
    """``hits`` with each row's columns in ``order`` (Q, k) (cosines stay as they were)."""
    r = hits.result

    def take(a: np.ndarray) -> np.ndarray:
        return np.take_along_axis(a, order, axis=1)

    result = SearchResult(take(r.scores), take(r.distances), take(r.indices))
    paths = [[row[j] for j in cols] for row, cols in zip(hits.paths, order, strict=True)]
    return replace(hits, result=result, labels=take(hits.labels), paths=paths)


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
    return array_hits(queries, vectors, labels, n_classes, k=k, need_means=need_means)[0]


def array_hits(
    queries: np.ndarray,
    vectors: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    *,
    k: int = EVIDENCE_K,
    need_means: bool = False,
) -> tuple[QueryEvidence, np.ndarray]:
    """:func:`array_evidence` with the row of ``vectors`` behind each hit, (Q, k) int64 (-1 =
    no hit): what a caller needs to find each hit's photo (the open-set simulation's local
    matches)."""
    index = FlatIndex(vectors.shape[1], use_gpu=False)
    index.add_with_ids(vectors, np.arange(len(labels), dtype=np.int64))
    result = index.search(queries, k)
    hit_labels = np.where(result.indices >= 0, labels[np.clip(result.indices, 0, None)], -1)
    sizes = class_sizes(labels, n_classes)
    means = None
    if need_means:
        means = mean_scores(queries, class_means(vectors, labels, n_classes), sizes)
    evidence = QueryEvidence(result.scores, hit_labels.astype(np.int64), sizes, means)
    return evidence, result.indices.astype(np.int64)
