"""ArcFace (additive angular margin) head, written here so the maths is ours and tested.

Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019.
For embedding x and class centre W_j at angle theta_j, the logits are
``s * cos(theta_j)`` for every class j except the true one y, which gets
``s * cos(theta_y + m)``. The margin is in radians (pytorch-metric-learning takes degrees:
a 28.6 meant as degrees is refused here). Training only: search and evaluation never load it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from retrieval.errors import InputError

_COS_EPS = 1e-7  # keeps sin(theta) = sqrt(1 - cos^2) away from 0, where its gradient explodes


class ArcFaceHead(nn.Module):
    """Class centres ``weight``: (C, D) float32; logits (B, C) float32 for CE.

    ``margin_rad`` may be changed between phases: with ``margin_rad = 0`` the logits are
    exactly the scaled cosines, i.e. phase 1's plain softmax cross-entropy.

    Where theta + m would pass pi, cos(theta + m) turns back up and would reward a larger
    angle. There (theta >= pi - m, i.e. cos(theta) <= cos(pi - m)) we use insightface's
    fallback ``cos(theta) - m * sin(m)`` instead. It still falls as theta grows, and at the
    switch it starts at ``-cos(m) - m * sin(m) <= -1 = cos(pi)`` (because
    ``cos(m) + m * sin(m)`` is 1 at m = 0 and increasing up to pi/2), so the target logit is
    a non-increasing function of theta on all of [0, pi], with a small downward step at the
    switch: the loss always pushes theta down. Margins are limited to [0, pi/2).
    """

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        *,
        scale: float = 64.0,
        margin_rad: float = 0.5,
    ) -> None:
        super().__init__()
        if embedding_dim < 1 or num_classes < 1:
            raise InputError(
                f"ArcFace needs embedding_dim >= 1 and num_classes >= 1, got "
                f"{embedding_dim} and {num_classes}; check the training split has classes"
            )
        if not scale > 0:
            raise InputError(f"--scale={scale}: must be > 0 (SPEC default 64)")
        self.scale = float(scale)
        self.margin_rad = margin_rad  # validated by the setter
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.xavier_uniform_(self.weight)

    @property
    def margin_rad(self) -> float:
        """Additive angular margin m, radians."""
        return self._margin_rad

    @margin_rad.setter
    def margin_rad(self, value: float) -> None:
        if not 0.0 <= value < math.pi / 2:
            raise InputError(
                f"--margin={value}: the ArcFace margin is in radians and must be in "
                f"[0, {math.pi / 2:.4f}); typical 0.3-0.5 (0.5 rad = 28.6 degrees)"
            )
        self._margin_rad = float(value)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """embeddings: (B, D), any float dtype; labels: (B,) int64 -> logits (B, C) float32.

        Computed in float32 with autocast off: cosines near 1 and the margin's sin/cos lose
        most of their digits in bfloat16.
        """
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            x = F.normalize(embeddings.float(), dim=1)
            w = F.normalize(self.weight.float(), dim=1)
            cos = (x @ w.T).clamp(-1.0 + _COS_EPS, 1.0 - _COS_EPS)  # (B, C)
            target = labels.long().unsqueeze(1)  # (B, 1)
            cos_y = cos.gather(1, target)  # (B, 1): cos(theta_y)
            cos_y_margin = self._target_logit_cos(cos_y)
            return self.scale * cos.scatter(1, target, cos_y_margin)

    def _target_logit_cos(self, cos_y: torch.Tensor) -> torch.Tensor:
        """cos(theta + m) where theta + m < pi, else the fallback (see the class docstring)."""
        m = self._margin_rad
        if m == 0.0:
            return cos_y
        sin_y = torch.sqrt(1.0 - cos_y * cos_y)
        cos_y_plus_m = cos_y * math.cos(m) - sin_y * math.sin(m)
        # theta + m < pi  <=>  theta < pi - m  <=>  cos(theta) > cos(pi - m)
        return torch.where(cos_y > math.cos(math.pi - m), cos_y_plus_m, cos_y - m * math.sin(m))

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the ArcFace logits: a float32 scalar."""
        return F.cross_entropy(self(embeddings, labels), labels.long())
