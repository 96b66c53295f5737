"""``--head_init imprint | imprint_centred``: ArcFace centres from train embeddings.

Qi, Brown and Lowe, "Low-Shot Learning with Imprinted Weights", CVPR 2018. One embedding pass
over the train split before epoch 1; the maths is ``ArcFaceHead.imprint_``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from retrieval.data.records import ImageRecord, labels_of
from retrieval.device import RuntimePlan
from retrieval.embed import extract_embeddings
from retrieval.model.arcface import ArcFaceHead


def imprint_head(
    model: torch.nn.Module,
    head: ArcFaceHead,
    train: Sequence[ImageRecord],
    class_to_idx: dict[str, int],
    *,
    transform: Callable,
    plan: RuntimePlan,
    batch_size: int,
    centred: bool = False,
) -> None:
    """Set each class centre of ``head`` to the mean embedding of its ``train`` photos."""
    started = time.perf_counter()
    embeddings = extract_embeddings(
        model, train, transform=transform, plan=plan, batch_size=batch_size, desc="imprinting"
    )
    labels = torch.from_numpy(labels_of(train, class_to_idx))
    imprinted = head.imprint_(torch.from_numpy(embeddings), labels, centred=centred)
    print(
        f"head: {imprinted} class centres imprinted from {len(train)} train embeddings"
        f"{' (centred)' if centred else ''}, mean cosine between classes "
        f"{mean_pairwise_cosine(head.weight[:: head.subcenters]):.2f} "
        f"({time.perf_counter() - started:.0f} s)",
        flush=True,
    )


def mean_pairwise_cosine(rows: torch.Tensor) -> float:
    """Mean cosine over all pairs of distinct rows, in O(N * D) rather than an N x N matrix.

    Why print it: near 1 the centres share one narrow cone and plain imprinting can stall
    (the synthetic demo: 0.86; 60 DogFaceNet dogs: 0.45); ``imprint_centred`` spreads them.
    """
    unit = F.normalize(rows.detach().float(), dim=1)
    n = unit.shape[0]
    if n < 2:
        return 1.0
    return float((unit.sum(dim=0).square().sum() - n) / (n * (n - 1)))
