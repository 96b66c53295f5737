"""Batch-hard triplet loss on the embeddings, an optional partner to the ArcFace head.

Hermans, Beyer and Leibe, "In Defense of the Triplet Loss for Person Re-Identification",
2017; used beside a classification loss in Luo et al.'s "Bag of Tricks" re-ID baseline
(2019). Why beside ArcFace: ArcFace pulls each photo towards its class centre (a proxy),
while search ranks photos against photos; the triplet term acts on those photo-to-photo
distances directly, in every P x K batch: for each photo, its farthest same-class photo must
be nearer than its nearest other-class photo by ``margin``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def batch_hard_triplet_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, *, margin: float = 0.3
) -> torch.Tensor:
    """Mean over anchors of ``relu(d(a, hardest p) - d(a, hardest n) + margin)``: float32.

    ``embeddings``: (B, D), normalised here, so ``d`` is the Euclidean distance of unit
    vectors (0..2); ``labels``: (B,). Another copy of the same photo in the batch (the P x K
    sampler repeats photos of classes with fewer than K) counts as a positive: it is another
    augmentation. Anchors without a positive or without a negative add nothing; a batch with
    no usable anchor gives 0 with the graph kept, so the caller's backward still works.
    """
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        x = F.normalize(embeddings.float(), dim=1)
        dist = (2.0 - 2.0 * (x @ x.T)).clamp_min(1e-12).sqrt()  # (B, B)
        same = labels.view(-1, 1) == labels.view(1, -1)
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        positive, negative = same & ~eye, ~same
        hardest_pos = dist.masked_fill(~positive, float("-inf")).amax(dim=1)
        hardest_neg = dist.masked_fill(~negative, float("inf")).amin(dim=1)
        usable = positive.any(dim=1) & negative.any(dim=1)
        if not bool(usable.any()):
            return dist.sum() * 0.0
        return F.relu(hardest_pos[usable] - hardest_neg[usable] + margin).mean()
