"""Generalized-mean (GeM) pooling: a learnable middle way between average and max pooling.

Radenovic, Tolias and Chum, "Fine-tuning CNN Image Retrieval with No Human Annotation",
TPAMI 2018. Per channel, ``(mean(x^p))^(1/p)`` over the feature map: p = 1 is average pooling,
p -> infinity tends to max pooling. A learnable p (init 3) lets training weight the few
locations that carry an individual's marks (spots, scars, fin notches) more than the
background, which is why re-ID and landmark-retrieval winners use it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from retrieval.errors import InputError


class GeM(nn.Module):
    """features: (B, C, H, W) -> pooled: (B, C, 1, 1) float32.

    ``p`` is a learnable (1,) float32 parameter; inputs are clamped to ``eps`` first, since
    x^p of a negative or zero activation is undefined or has no useful gradient. Computed
    in float32 with autocast off: x^p with p near 3 overflows float16 for activations above
    ~40 and loses most digits in bfloat16.
    """

    def __init__(self, p: float = 3.0, *, eps: float = 1e-6, learnable: bool = True) -> None:
        super().__init__()
        if not p > 0:
            raise InputError(f"GeM p={p}: must be > 0 (1 = average pooling, 3 is usual)")
        if not eps > 0:
            raise InputError(f"GeM eps={eps}: must be > 0 (default 1e-6)")
        self.p = nn.Parameter(torch.full((1,), float(p)), requires_grad=learnable)
        self.eps = float(eps)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features: (B, C, H, W), any float dtype -> (B, C, 1, 1) float32."""
        with torch.autocast(device_type=features.device.type, enabled=False):
            p = self.p.float()
            x = features.float().clamp(min=self.eps).pow(p)
            return F.adaptive_avg_pool2d(x, 1).pow(1.0 / p)

    def extra_repr(self) -> str:
        return f"p={self.p.detach().float().item():.4f}, eps={self.eps}"
