"""Validation during training: gallery = train embeddings, queries = the val split (SPEC 4.1)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from retrieval.data.records import ImageRecord, labels_of
from retrieval.device import RuntimePlan
from retrieval.embed import extract_embeddings
from retrieval.metrics import RetrievalMetrics, evaluate_retrieval


def validate(
    model: torch.nn.Module,
    *,
    gallery: Sequence[ImageRecord],
    queries: Sequence[ImageRecord],
    class_to_idx: dict[str, int],
    transform: Callable,
    plan: RuntimePlan,
    batch_size: int,
    progress: bool = True,
) -> RetrievalMetrics | None:
    """Recall@1/5 and mAP of ``queries`` against ``gallery``; None when there are no queries."""
    if not queries or not gallery:
        return None
    # One pass over both sets: one data-loader start-up per validation, not two.
    embeddings = extract_embeddings(
        model,
        [*gallery, *queries],
        transform=transform,
        plan=plan,
        batch_size=batch_size,
        progress=progress,
        desc="validation",
    )
    return evaluate_retrieval(
        embeddings[len(gallery) :],
        labels_of(queries, class_to_idx),
        embeddings[: len(gallery)],
        labels_of(gallery, class_to_idx),
    )
