"""Flank-aware flips: does a mirrored photo still show the same individual?

A dog's face or a whale's fluke looks much the same mirrored, so flip augmentation and flip
TTA are free extra views. The left and right flanks of a jaguar carry different spot patterns,
and a mirrored left flank is the pattern of no animal at all: flips then teach the model to
match patterns that never occur. Which case a data set is cannot be read off its species, so it
is measured: embed each validation photo and its mirror, and ask how well mirrored queries
still retrieve their own individual among the unmirrored photos.

Run the check with a model that was not itself trained with flips (the frozen ImageNet backbone
or a ``--no_hflip`` model); one trained with flips has learnt mirror invariance by construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torchvision.transforms as T

from retrieval.data.records import ImageRecord, labels_of
from retrieval.data.transforms import build_eval_transform
from retrieval.device import RuntimePlan
from retrieval.embed import extract_embeddings
from retrieval.errors import InputError
from retrieval.metrics import evaluate_retrieval, unit_rows

# How much mAP mirrored queries may lose before flips count as changing the identity: below
# this the loss is within the noise of a validation split of a few dozen photos.
MIRROR_TOLERANCE = 0.02


@dataclass(frozen=True)
class MirrorReport:
    """Mirror statistics of one labelled set (leave-one-out retrieval within the set)."""

    n_images: int
    mirror_similarity: float  # mean cosine of a photo and its own mirror
    positive_similarity: float  # mean cosine of two photos of the same individual
    negative_similarity: float  # mean cosine of photos of different individuals
    plain_map: float  # identity-balanced mAP, photos against the other photos
    mirrored_map: float  # mirrored photos as queries against the unmirrored others
    tta_map: float  # flip TTA: each photo the mean of itself and its mirror

    def to_dict(self) -> dict[str, float]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class FlipPolicy:
    augment: bool  # train with RandomHorizontalFlip
    tta: bool  # average each embedding with its mirror's at query time
    reason: str

    def flags(self) -> str:
        """The train.py / evaluate.py flags that apply this policy."""
        train = "train.py (default flips)" if self.augment else "train.py --no_hflip"
        return f"{train}; evaluate.py/search.py --tta {'flip' if self.tta else 'none'}"


def mirror_report(embeddings: np.ndarray, mirrored: np.ndarray, labels: np.ndarray) -> MirrorReport:
    """Compare a set with its mirror images.

    embeddings, mirrored: (N, D) float32 (normalised here), row i of ``mirrored`` the mirror
    of photo i; labels: (N,) int. Only individuals with at least two photos are scored, and a
    query never retrieves itself or its own mirror.
    """
    x, m = unit_rows(embeddings, "embeddings"), unit_rows(mirrored, "mirrored")
    labels = np.asarray(labels)
    if m.shape != x.shape or labels.shape != (x.shape[0],):
        raise InputError(
            f"need matching shapes, got embeddings {x.shape}, mirrored {m.shape}, "
            f"labels {labels.shape}"
        )
    # Only individuals with two or more photos have something to retrieve.
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    keep = counts[inverse] >= 2
    if not keep.any():
        raise InputError("no individual has two photos in this set: nothing to retrieve")
    x, m, labels = x[keep], m[keep], labels[keep]
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~np.eye(len(labels), dtype=bool)
    cosine = x @ x.T
    tta = unit_rows(x + m, "flip-TTA embeddings")
    return MirrorReport(
        n_images=int(x.shape[0]),
        mirror_similarity=float(np.einsum("ij,ij->i", x, m).mean()),
        positive_similarity=float(cosine[same & off_diagonal].mean()),
        negative_similarity=float(cosine[~same].mean()) if (~same).any() else float("nan"),
        plain_map=_set_map(x, x, labels),
        mirrored_map=_set_map(m, x, labels),
        tta_map=_set_map(tta, tta, labels),
    )


def choose_flip_policy(report: MirrorReport, *, tolerance: float = MIRROR_TOLERANCE) -> FlipPolicy:
    """Flip augmentation when mirroring keeps the identity; flip TTA only if it measured better."""
    keeps = report.mirrored_map >= report.plain_map - tolerance
    tta = keeps and report.tta_map > report.plain_map
    compare = f"mirrored-query mAP {report.mirrored_map:.3f} vs {report.plain_map:.3f} unmirrored"
    if keeps:
        reason = (
            f"a mirrored photo still finds its own individual ({compare}): flips keep the "
            f"identity; flip TTA mAP {report.tta_map:.3f} "
            + ("beats" if tta else "does not beat")
            + " the plain embedding"
        )
    else:
        reason = (
            f"mirroring loses the identity ({compare}, more than {tolerance:.2f} lower): left "
            "and right sides differ, so no flip augmentation and no flip TTA"
        )
    return FlipPolicy(augment=keeps, tta=tta, reason=reason)


def embed_with_mirrors(
    model: torch.nn.Module,
    records: Sequence[ImageRecord],
    *,
    image_size: int,
    plan: RuntimePlan,
    batch_size: int = 64,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of ``records`` and of their mirror images: two (N, D) float32 arrays."""
    plain = build_eval_transform(image_size)
    mirror = T.Compose([plain, T.RandomHorizontalFlip(p=1.0)])
    common = dict(plan=plan, batch_size=batch_size, progress=progress)
    return (
        extract_embeddings(model, records, transform=plain, desc="photos", **common),
        extract_embeddings(model, records, transform=mirror, desc="mirrors", **common),
    )


def flip_check(
    model: torch.nn.Module,
    records: Sequence[ImageRecord],
    class_to_idx: dict[str, int],
    *,
    image_size: int,
    plan: RuntimePlan,
    batch_size: int = 64,
) -> tuple[MirrorReport, FlipPolicy]:
    """Measure ``records`` (normally the val split) with their mirrors and choose the policy."""
    known = [r for r in records if r.label in class_to_idx]
    plain, mirrored = embed_with_mirrors(
        model, known, image_size=image_size, plan=plan, batch_size=batch_size
    )
    report = mirror_report(plain, mirrored, labels_of(known, class_to_idx))
    return report, choose_flip_policy(report)


def flip_check_summary(
    report: MirrorReport, policy: FlipPolicy, *, measured_on: str, trained_with_flips: bool
) -> dict:
    """What ``evaluate.py --flip_check`` saves; the caveat warns of a model trained with flips."""
    caveat = (
        "this model was trained with flips, which teaches mirror invariance: run the check "
        "on a --no_hflip model for an unbiased answer"
        if trained_with_flips
        else ""
    )
    return {
        "split": measured_on,
        **report.to_dict(),
        "augment": policy.augment,
        "tta": policy.tta,
        "reason": policy.reason,
        "caveat": caveat,
    }


def _set_map(queries: np.ndarray, gallery: np.ndarray, labels: np.ndarray) -> float:
    """Identity-balanced mAP of row i of ``queries`` against the other rows of ``gallery``."""
    return evaluate_retrieval(
        queries, labels, gallery, labels, exclude_self=True
    ).identity_balanced_map
