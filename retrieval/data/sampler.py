"""Balanced P x K batches for metric learning (SPEC 3.1).

Every batch holds P distinct classes with K images each, so each batch has both positives
(same class) and hard negatives (other classes) whatever the class imbalance of the data.

Epoch length: ``ceil(N / (P*K))`` batches, so each image is seen about once per epoch, but at
least ``ceil(C / P)`` batches, so every class appears at least once per epoch even when
classes average fewer than K images. With several replicas (DDP) these batches are shared out:
each replica gets ``len(sampler) = ceil(total / num_replicas)`` batches (all replicas the same
number, as DDP needs), so an epoch makes ``len * num_replicas`` batches in all.

Order: classes are drawn from a shuffled class order, reshuffled when used up, so every class
comes up once per cycle; within a class, images are drawn from a shuffled order of that
class's images in the same way, so the images of a large class take turns. A class with
fewer than K images puts all of them in the batch and fills up by drawing with replacement.

Randomness: one numpy Generator seeded with ``(seed, epoch)`` per epoch, identical on every
replica; replica ``rank`` takes batches ``rank, rank + R, rank + 2R, ...``, so replicas
never share a batch in an epoch. Call ``set_epoch`` before each epoch.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from retrieval.errors import InputError


class PKSampler(Sampler[list[int]]):
    """Batch sampler: yields lists of P*K dataset indices (use as ``batch_sampler``)."""

    def __init__(
        self,
        labels: Sequence[int],
        *,
        p: int,
        k: int = 4,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        super().__init__()
        _check_sizes(p=p, k=k, num_replicas=num_replicas, rank=rank)
        label_array = np.asarray(labels)
        if label_array.ndim != 1 or label_array.size == 0:
            raise InputError("PKSampler: labels must be a non-empty 1-D sequence of class ids")
        classes, inverse = np.unique(label_array, return_inverse=True)
        if len(classes) < p:
            raise InputError(
                f"--batch_p={p} but the training split has only {len(classes)} classes; "
                f"lower --batch_p to at most {len(classes)}"
            )
        order = np.argsort(inverse, kind="stable")
        counts = np.bincount(inverse, minlength=len(classes))
        # indices_per_class[c]: dataset indices of class c, ascending
        self._indices_per_class = np.split(order, np.cumsum(counts)[:-1])
        self.p, self.k, self.seed = p, k, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        self.total_batches = max(
            1, math.ceil(label_array.size / (p * k)), math.ceil(len(classes) / p)
        )

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch's batches (same seed and epoch give the same batches)."""
        self.epoch = epoch

    def __len__(self) -> int:
        """Batches this replica yields per epoch."""
        return math.ceil(self.total_batches / self.num_replicas)

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._epoch_batches()
        yield from batches[self.rank :: self.num_replicas]

    def _epoch_batches(self) -> list[list[int]]:
        """All ``len(self) * num_replicas`` batches of the epoch, as every replica sees them."""
        rng = np.random.default_rng((self.seed, self.epoch))
        num_classes = len(self._indices_per_class)
        class_queue: deque[int] = deque()
        image_queues = [deque() for _ in range(num_classes)]
        batches = []
        for _ in range(len(self) * self.num_replicas):
            batch: list[int] = []
            for c in _draw_distinct(class_queue, self.p, num_classes, rng):
                batch.extend(self._draw_images(c, image_queues[c], rng))
            batches.append(batch)
        return batches

    def _draw_images(self, c: int, queue: deque[int], rng: np.random.Generator) -> list[int]:
        """K dataset indices of class ``c``: distinct when it has >= K images."""
        indices = self._indices_per_class[c]
        positions = _draw_distinct(queue, min(self.k, len(indices)), len(indices), rng)
        if len(positions) < self.k:  # tiny class: all its images, then repeats
            positions += rng.integers(0, len(indices), self.k - len(positions)).tolist()
        return [int(indices[i]) for i in positions]


def _draw_distinct(
    queue: deque[int], count: int, pool_size: int, rng: np.random.Generator
) -> list[int]:
    """Take ``count`` distinct items of ``range(pool_size)`` from a cycling shuffled queue.

    When the queue runs dry it is refilled with a fresh permutation; items of the new
    permutation already drawn for this call are skipped and go back to the front, to be served
    next call, so no item is lost from a cycle.
    """
    assert 0 < count <= pool_size
    drawn: list[int] = []
    seen: set[int] = set()
    skipped: list[int] = []
    while len(drawn) < count:
        if not queue:
            queue.extend(rng.permutation(pool_size).tolist())
        item = queue.popleft()
        if item in seen:
            skipped.append(item)
            continue
        drawn.append(item)
        seen.add(item)
    queue.extendleft(reversed(skipped))
    return drawn


def _check_sizes(*, p: int, k: int, num_replicas: int, rank: int) -> None:
    if p < 1:
        raise InputError(f"--batch_p={p}: must be >= 1 (classes per batch)")
    if k < 1:
        raise InputError(f"--batch_k={k}: must be >= 1 (images per class, typically 4-5)")
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise InputError(
            f"PKSampler: rank {rank} of {num_replicas} replicas is invalid; need "
            "0 <= rank < num_replicas (torchrun sets both)"
        )


class EpochStream(Sampler[list[tuple[int, int]]]):
    """The batches of consecutive epochs, without end, from ``start_epoch`` on.

    One data-loader iterator then serves the whole run, so workers prefetch the next epoch's
    first batches while the current epoch ends; restarting the iterator every epoch leaves the
    GPU idle while one worker assembles a whole batch. The training loop takes ``len(sampler)``
    batches per epoch from it.

    Each item is ``(dataset index, augmentation key)`` for a ``KeyedDataset``: the key comes
    from (seed, epoch, rank, batch, position) only, so a resumed run augments every image as
    the uninterrupted run would have, whatever the number of loader workers (their own random
    states start afresh with each loader iterator).
    """

    def __init__(self, sampler: PKSampler, *, start_epoch: int = 0) -> None:
        self.sampler = sampler
        self.start_epoch = start_epoch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        s = self.sampler
        for epoch in itertools.count(self.start_epoch):
            s.set_epoch(epoch)
            for number, batch in enumerate(s):
                entropy = (s.seed, epoch, s.rank, number)
                keys = np.random.SeedSequence(entropy).generate_state(len(batch)).tolist()
                yield list(zip(batch, keys, strict=True))
