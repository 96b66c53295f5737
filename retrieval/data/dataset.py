"""A torch ``Dataset`` over ``ImageRecord``s, reading pixels through ``load_rgb`` only.

Kept apart from the samplers and the training loop so that embedding a gallery, evaluating
and searching read images exactly as training does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset

from retrieval.data.images import load_rgb
from retrieval.data.records import ImageRecord

UNKNOWN_LABEL = -1  # label of an image without a class index (search queries, unseen classes)


class ImageDataset(Dataset):
    """``(image tensor, label index)`` pairs for a list of records.

    ``class_to_idx=None`` (or a label missing from it) gives ``UNKNOWN_LABEL``: embedding
    queries needs no labels.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        class_to_idx: dict[str, int] | None,
        transform: Callable[[Image.Image], torch.Tensor],
    ) -> None:
        self.records = list(records)
        self.transform = transform
        mapping = class_to_idx or {}
        self._labels = [mapping.get(r.label, UNKNOWN_LABEL) for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        """(C, H, W) float32 tensor from ``transform``, and the label index."""
        return self.transform(load_rgb(self.records[i].path)), self._labels[i]

    @property
    def labels(self) -> list[int]:
        """Label index of every record, in order (-1 where unknown)."""
        return list(self._labels)


class KeyedDataset(Dataset):
    """``base[index]`` addressed as ``(index, key)``, with torch's RNG seeded from ``key``.

    Why: the training transforms draw from torch's global generator, which in a loader worker
    starts from a seed drawn when the loader iterator is made; keyed, an image's augmentation
    depends on its key alone (see ``EpochStream``), so resumes and worker counts do not change
    it. The caller's generator is left as it was (this also runs in the main process).
    """

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, key = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(key)
            return self.base[index]
