"""ArcFace (additive angular margin) head, written here so the maths is ours and tested.

Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019.
For embedding x and class centre W_j at angle theta_j, the logits are
``s * cos(theta_j)`` for every class j except the true one y, which gets
``s * cos(theta_y + m)``. The margin is in radians (pytorch-metric-learning takes degrees:
a 28.6 meant as degrees is refused here). Training only: search and evaluation never load it.

Three options, all off by default:

- Sub-center ArcFace (Deng et al., "Sub-center ArcFace: Boosting Face Recognition by
  Large-scale Noisy Web Faces", ECCV 2020): k centres per class, the class cosine is the
  largest of its k, so one individual seen from clearly different sides (or a mislabelled
  image) may pull a sub-centre of its own instead of dragging the class centre.
- Dynamic per-class margins (Ha et al., "Google Landmark Recognition 2020 Competition Third
  Place Solution", arXiv:2010.05350; used by the Happywhale 2022 1st place): rare classes
  get a larger margin, ``m_c = a * n_c^(-1/4) + b`` (``dynamic_margins``).
- Imprinted centres (Qi, Brown and Lowe, "Low-Shot Learning with Imprinted Weights", CVPR
  2018; ``imprint_``): each class starts at the mean direction of its training embeddings
  instead of a random one; optionally centred first (the mean of all embeddings removed), so
  centres of classes that share one dominant direction start spread apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from retrieval.errors import InputError

_COS_EPS = 1e-7  # keeps sin(theta) = sqrt(1 - cos^2) away from 0, where its gradient explodes


class ArcFaceHead(nn.Module):
    """Class centres ``weight``: (C * k, D) float32; logits (B, C) float32 for CE.

    ``subcenters`` = k: rows ``c * k .. c * k + k - 1`` of ``weight`` are class c's
    sub-centres and its cosine is their maximum; k = 1 is the plain ArcFace head.

    ``margin_rad`` may be changed between phases: with ``margin_rad = 0`` the logits are
    exactly the scaled cosines, i.e. phase 1's plain softmax cross-entropy.

    ``class_margins``: (C,) float32 radians, one margin per class (``dynamic_margins``), used
    instead of the scalar for the target class. The rule that composes it with the phases:
    ``margin_rad`` is the switch. ``margin_rad == 0`` applies no margin at all (phase 1:
    plain scaled cosines even with ``class_margins`` set); any ``margin_rad > 0`` applies
    ``class_margins`` as given, and the scalar's value is then not used. Stored as a buffer,
    so it moves with ``.to(device)`` and is saved in the state dict.

    Where theta + m would pass pi, cos(theta + m) turns back up and would reward a larger
    angle. There (theta >= pi - m, i.e. cos(theta) <= cos(pi - m)) we use insightface's
    fallback ``cos(theta) - m * sin(m)`` instead. It still falls as theta grows, and at the
    switch it starts at ``-cos(m) - m * sin(m) <= -1 = cos(pi)`` (because
    ``cos(m) + m * sin(m)`` is 1 at m = 0 and increasing up to pi/2), so the target logit is
    a non-increasing function of theta on all of [0, pi], with a small downward step at the
    switch: the loss always pushes theta down. Margins are limited to [0, pi/2); the same
    fallback applies per class with that class's margin.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        *,
        scale: float = 64.0,
        margin_rad: float = 0.5,
        subcenters: int = 1,
        class_margins: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if embedding_dim < 1 or num_classes < 1:
            raise InputError(
                f"ArcFace needs embedding_dim >= 1 and num_classes >= 1, got "
                f"{embedding_dim} and {num_classes}; check the training split has classes"
            )
        if not scale > 0:
            raise InputError(f"--scale={scale}: must be > 0 (SPEC default 64)")
        if isinstance(subcenters, bool) or not isinstance(subcenters, int) or subcenters < 1:
            raise InputError(
                f"--subcenters={subcenters}: must be an integer >= 1 (1 = off, 3 usual)"
            )
        self.scale = float(scale)
        self.margin_rad = margin_rad  # validated by the setter
        self.num_classes = num_classes
        self.subcenters = subcenters
        self.register_buffer("class_margins", _checked_class_margins(class_margins, num_classes))
        self.weight = nn.Parameter(torch.empty(num_classes * subcenters, embedding_dim))
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
            cos = (x @ w.T).clamp(-1.0 + _COS_EPS, 1.0 - _COS_EPS)  # (B, C * k)
            if self.subcenters > 1:  # (B, C, k) -> best sub-centre per class
                cos = cos.view(cos.shape[0], self.num_classes, self.subcenters).amax(dim=2)
            target = labels.long().unsqueeze(1)  # (B, 1)
            cos_y = cos.gather(1, target)  # (B, 1): cos(theta_y)
            cos_y_margin = self._target_logit_cos(cos_y, target)
            return self.scale * cos.scatter(1, target, cos_y_margin)

    def _target_logit_cos(self, cos_y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """cos(theta + m) where theta + m < pi, else the fallback (see the class docstring)."""
        m = self._margin_rad
        if m == 0.0:
            return cos_y
        sin_y = torch.sqrt(1.0 - cos_y * cos_y)
        if self.class_margins is not None:
            return _margin_cos(cos_y, sin_y, self.class_margins.float()[target])  # (B, 1)
        cos_y_plus_m = cos_y * math.cos(m) - sin_y * math.sin(m)
        # theta + m < pi  <=>  theta < pi - m  <=>  cos(theta) > cos(pi - m)
        return torch.where(cos_y > math.cos(math.pi - m), cos_y_plus_m, cos_y - m * math.sin(m))

    @torch.no_grad()
    def imprint_(
        self, embeddings: torch.Tensor, labels: torch.Tensor, *, centred: bool = False
    ) -> int:
        """Set each class's centres (all k sub-centres) to its mean embedding direction.

        Why: a P x K sampler shows each of C classes about P / C times per step, so with
        hundreds of individuals a centre gets a few dozen updates in a whole run and barely
        leaves its random start; the backbone then has to carry every embedding to a random
        point. Imprinted centres start where the class already is. Sub-centres start equal and
        split as the max picks one of them. Classes absent from ``labels`` keep their random
        centres. ``centred`` subtracts the mean of all (normalised) embeddings first: an
        untrained neck can map look-alike classes into one narrow cone (synthetic demo: mean
        cosine 0.86 between class means, its closest pair nearer than the margin), where plain
        centres cannot spread. ``embeddings``: (N, D);
        ``labels``: (N,) class indices. Returns how many classes were imprinted.
        """
        x, labels = embeddings.to(self.weight.device), labels.to(self.weight.device)
        if x.shape != (labels.shape[0], self.weight.shape[1]):
            raise InputError(
                f"imprint: embeddings of shape {tuple(x.shape)} and {labels.shape[0]} labels "
                f"do not fit a head of dimension {self.weight.shape[1]}"
            )
        means, present = class_mean_directions(x, labels, self.num_classes, centred=centred)
        centres = means.repeat_interleave(self.subcenters, dim=0)
        rows = present.repeat_interleave(self.subcenters)
        scale = self.weight.norm(dim=1, keepdim=True)  # keep the init's norms (AdamW steps)
        self.weight[rows] = (centres * scale)[rows].to(self.weight.dtype)
        return int(present.sum())

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the ArcFace logits: a float32 scalar."""
        return F.cross_entropy(self(embeddings, labels), labels.long())


def class_mean_directions(
    embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int, *, centred: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each class's mean direction of normalised ``embeddings``: (C, D) float32 unit rows
    (zero rows for absent classes), and the (C,) mask of classes that have any embedding."""
    x = F.normalize(embeddings.float(), dim=1)
    labels = labels.long()
    if centred:
        x = x - x.mean(dim=0, keepdim=True)
    sums = x.new_zeros(num_classes, x.shape[1]).index_add_(0, labels, x)
    present = torch.bincount(labels, minlength=num_classes) > 0
    return F.normalize(sums, dim=1), present


def _margin_cos(cos_y: torch.Tensor, sin_y: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """The scalar rule with a margin per row: m is (B, 1) float32 radians."""
    cos_m, sin_m = torch.cos(m), torch.sin(m)
    cos_y_plus_m = cos_y * cos_m - sin_y * sin_m
    # cos(pi - m) = -cos(m)
    return torch.where(cos_y > -cos_m, cos_y_plus_m, cos_y - m * sin_m)


def _checked_class_margins(margins: torch.Tensor | None, num_classes: int) -> torch.Tensor | None:
    """(C,) float32 margins in [0, pi/2) radians, or None; anything else is refused."""
    if margins is None:
        return None
    margins = torch.as_tensor(margins).detach().to(torch.float32).clone()
    if margins.shape != (num_classes,):
        raise InputError(
            f"class_margins has shape {tuple(margins.shape)}; expected ({num_classes},), one "
            "margin per class in class_to_idx order (see dynamic_margins)"
        )
    if not bool(torch.all((margins >= 0) & (margins < math.pi / 2))):
        raise InputError(
            f"class_margins must be radians in [0, {math.pi / 2:.4f}); got min "
            f"{margins.min().item():.4f}, max {margins.max().item():.4f}: lower a/b or set high"
        )
    return margins


def dynamic_margins(
    class_counts: Sequence[int],
    *,
    a: float = 0.5,
    b: float = 0.05,
    low: float | None = None,
    high: float | None = None,
) -> torch.Tensor:
    """Per-class ArcFace margins from training-image counts: (C,) float32 radians.

    ``m_c = a * n_c^(-1/4) + b`` (Ha et al. 2020, GLR2020 3rd place, arXiv:2010.05350; the
    Happywhale 2022 1st place tuned the same form): a class seen once gets ``a + b``, one
    seen 16 times ``a / 2 + b``, so rare individuals are pushed harder apart. With ``low``
    and ``high`` the values are min-max rescaled so the most frequent class gets ``low`` and
    the rarest ``high`` (all counts equal: every class gets the midpoint).
    ``class_counts``: images per class, in class index order, each >= 1.
    """
    counts = [int(n) for n in class_counts]
    if not counts or min(counts) < 1:
        raise InputError(
            f"dynamic_margins: class_counts must be >= 1 for every class, got "
            f"{counts[:8]}{' ...' if len(counts) > 8 else ''}; drop classes with no "
            "training image"
        )
    n = torch.tensor(counts, dtype=torch.float64)
    margins = a * n.pow(-0.25) + b
    if (low is None) != (high is None):
        raise InputError(f"dynamic_margins: give both low and high or neither (got {low}, {high})")
    if low is not None and high is not None:
        if not 0.0 <= low <= high < math.pi / 2:
            raise InputError(
                f"dynamic_margins: need 0 <= low <= high < {math.pi / 2:.4f} radians, got "
                f"low={low}, high={high}"
            )
        spread = margins.max() - margins.min()
        if spread > 0:
            margins = low + (margins - margins.min()) / spread * (high - low)
        else:
            margins = torch.full_like(margins, (low + high) / 2)
    return _checked_class_margins(margins, len(counts))
