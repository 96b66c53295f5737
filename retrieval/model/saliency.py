"""Where the backbone looks: a foreground estimate for photos without an alpha channel.

Background keypoints (a waterhole, a fence, a shared kennel wall) match between photos of
different animals, so local matching counts them as evidence (issue 36). No segmentation
weights install offline, but the trained backbone itself fires where the animal is: the L2 norm
of its last feature map over channels is a class-agnostic saliency map (the activation-based
attention of Zagoruyko & Komodakis 2017). Cells at or above the map's mean are kept as
foreground; ``retrieval.calibration.local_policy`` keeps the estimate only where val says it
helps, since on tight crops (aligned dog faces) the whole photo is the animal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from retrieval.data.images import load_rgb
from retrieval.device import RuntimePlan, autocast
from retrieval.model.embedder import EmbeddingModel

_STRIDE = 32  # the backbones' output stride: the input is a whole number of feature cells
_UPSAMPLE = 4  # mask cells per feature cell: bilinear between cells, not blocks
_PROGRESS_FROM = 30  # photos; fewer take a few seconds at most


@dataclass(frozen=True)
class BackboneSaliency:
    """Foreground masks from ``model``'s feature map (a ``ForegroundEstimate``).

    The whole photo is seen at ``image_size`` on its longer side, aspect kept, so the mask
    covers what the eval transform's centre crop would cut off. ``key``: the model's
    fingerprint, since another model draws other masks.
    """

    model: EmbeddingModel  # in eval mode, as ``LoadedModel`` holds it
    plan: RuntimePlan
    image_size: int
    key: str

    def masks(self, paths: Sequence[str], *, progress: bool = True) -> list[np.ndarray]:
        """One (h, w) bool mask per photo, True on the estimated animal; an unreadable photo
        raises ``UnreadableImage`` (the one-line error)."""
        bar = tqdm(
            paths,
            desc="foreground",
            disable=not progress or len(paths) < _PROGRESS_FROM,
            leave=False,
        )
        return [self.mask(load_rgb(Path(p))) for p in bar]

    @torch.inference_mode()
    def mask(self, image) -> np.ndarray:
        """(h, w) bool foreground of a PIL RGB ``image``; all True where the backbone gives
        no spatial map (a ViT's tokens)."""
        features = self._features(image)
        if features.ndim != 4:
            return np.ones((1, 1), bool)
        heat = torch.linalg.vector_norm(features[0].float(), dim=0).cpu().numpy()  # (h, w)
        return foreground_of(heat)

    def _features(self, image) -> torch.Tensor:
        scale = self.image_size / max(image.size)
        size = [max(_STRIDE, round(side * scale / _STRIDE) * _STRIDE) for side in image.size]
        resized = np.array(image.resize(tuple(size), resample=3))  # 3: bicubic; writable
        device = next(self.model.parameters()).device
        batch = torch.from_numpy(resized).permute(2, 0, 1)[None].contiguous()
        batch = self.model.input_norm.apply(batch.to(device))
        with autocast(self.plan):
            return self.model.backbone.forward_features(batch)


def foreground_of(heat: np.ndarray) -> np.ndarray:
    """(h, w) saliency -> (h x _UPSAMPLE, w x _UPSAMPLE) bool, True at or above its mean.

    A flat map (nothing stands out) keeps everything: no estimate is better than a wrong one.
    """
    heat = np.asarray(heat, np.float32)
    h, w = heat.shape
    fine = cv2.resize(heat, (w * _UPSAMPLE, h * _UPSAMPLE), interpolation=cv2.INTER_LINEAR)
    if float(heat.max() - heat.min()) <= 1e-6 * max(float(np.abs(heat).max()), 1e-12):
        return np.ones_like(fine, bool)
    return fine >= heat.mean()
