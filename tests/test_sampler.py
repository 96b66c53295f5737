"""P x K batch sampler: batch shape, epoch length, determinism, sharding across replicas."""

import math
from collections import Counter

import numpy as np
import pytest
from torch.utils.data import DataLoader

from retrieval.data.sampler import EpochStream, PKSampler
from retrieval.errors import InputError


def _labels(sizes: list[int], seed: int = 0) -> list[int]:
    """Class ids with ``sizes[c]`` images of class c, in shuffled dataset order."""
    labels = np.repeat(np.arange(len(sizes)) * 10 + 3, sizes)  # non-contiguous class ids
    return np.random.default_rng(seed).permutation(labels).tolist()


IMBALANCED = [12, 7, 4, 5, 9, 4, 20, 6, 4, 8]  # 79 images, 10 classes


@pytest.mark.parametrize(("p", "k"), [(2, 4), (4, 4), (5, 2), (10, 4)])
def test_batches_hold_p_distinct_classes_of_k_images(p, k):
    labels = _labels(IMBALANCED)
    sampler = PKSampler(labels, p=p, k=k, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    for batch in batches:
        assert len(batch) == p * k
        counts = Counter(labels[i] for i in batch)
        assert len(counts) == p
        assert set(counts.values()) == {k}
        # every class here has >= k images: no repeats within a class
        assert len(set(batch)) == p * k


@pytest.mark.parametrize(
    ("sizes", "p", "k", "expected"),
    [
        (IMBALANCED, 4, 4, math.ceil(79 / 16)),
        ([4] * 10, 2, 4, 5),
        ([2] * 30, 4, 4, math.ceil(30 / 4)),  # few images per class: every class still comes up
        ([3, 3], 2, 4, 1),
    ],
)
def test_len_is_the_documented_epoch_length(sizes, p, k, expected):
    sampler = PKSampler(_labels(sizes), p=p, k=k)
    assert len(sampler) == expected
    assert len(list(sampler)) == expected


def test_every_class_appears_each_epoch():
    labels = _labels([2] * 30)
    sampler = PKSampler(labels, p=4, k=4, seed=5)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        seen = {labels[i] for batch in sampler for i in batch}
        assert seen == set(labels)


def test_images_of_a_class_take_turns():
    labels = _labels([16] * 4)
    sampler = PKSampler(labels, p=4, k=4, seed=0)  # 4 batches: each image exactly once
    seen = Counter(i for batch in sampler for i in batch)
    assert len(seen) == len(labels)
    assert set(seen.values()) == {1}


def test_tiny_classes_are_filled_with_replacement():
    labels = _labels([1, 2, 6, 6])
    sampler = PKSampler(labels, p=4, k=4, seed=3)
    for batch in sampler:
        by_class: dict[int, list[int]] = {}
        for i in batch:
            by_class.setdefault(labels[i], []).append(i)
        assert all(len(v) == 4 for v in by_class.values())
        tiny = [i for i, y in enumerate(labels) if y in (3, 13)]
        assert set(tiny) <= set(batch)  # all images of the tiny classes are in
        assert len(set(by_class[3])) == 1  # the one-image class repeats its image


def test_same_seed_and_epoch_repeat_other_epochs_differ():
    labels = _labels(IMBALANCED)
    a = PKSampler(labels, p=4, k=4, seed=7)
    b = PKSampler(labels, p=4, k=4, seed=7)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    b.set_epoch(4)
    assert list(a) != list(b)
    c = PKSampler(labels, p=4, k=4, seed=8)
    c.set_epoch(3)
    assert list(a) != list(c)


@pytest.mark.parametrize("num_replicas", [2, 3])
def test_replicas_get_disjoint_shards_of_one_epoch(num_replicas):
    labels = _labels(IMBALANCED)
    single = PKSampler(labels, p=2, k=4, seed=11)
    shards = [
        PKSampler(labels, p=2, k=4, seed=11, num_replicas=num_replicas, rank=r)
        for r in range(num_replicas)
    ]
    for s in shards:
        s.set_epoch(2)
    per_rank = [list(s) for s in shards]
    lengths = {len(b) for b in per_rank}
    assert lengths == {math.ceil(single.total_batches / num_replicas)}  # equal, as DDP needs
    all_batches = [tuple(b) for batches in per_rank for b in batches]
    assert len(set(all_batches)) == len(all_batches)  # no batch seen by two replicas
    # interleaving the shards gives the epoch as one replica-count-aware stream
    expected = shards[0]._epoch_batches()
    interleaved = [per_rank[i % num_replicas][i // num_replicas] for i in range(len(expected))]
    assert interleaved == expected


def test_works_as_a_dataloader_batch_sampler():
    labels = _labels(IMBALANCED)
    loader = DataLoader(list(range(len(labels))), batch_sampler=PKSampler(labels, p=3, k=2))
    batches = list(loader)
    assert len(batches) == math.ceil(79 / 6)
    assert all(tuple(b.shape) == (6,) for b in batches)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"p": 11}, "only 10 classes"),
        ({"p": 0}, "batch_p"),
        ({"p": 2, "k": 0}, "batch_k"),
        ({"p": 2, "num_replicas": 2, "rank": 2}, "rank"),
    ],
)
def test_bad_settings_are_input_errors(kwargs, match):
    with pytest.raises(InputError, match=match):
        PKSampler(_labels(IMBALANCED), **kwargs)


def test_empty_labels_are_an_input_error():
    with pytest.raises(InputError, match="non-empty"):
        PKSampler([], p=1)


def test_epoch_stream_yields_consecutive_epochs_in_order():
    labels = [c for c in range(6) for _ in range(3)]
    sampler = PKSampler(labels, p=3, k=2, seed=4)
    per_epoch = len(sampler)
    stream = iter(EpochStream(PKSampler(labels, p=3, k=2, seed=4), start_epoch=2))
    for epoch in (2, 3, 4):
        sampler.set_epoch(epoch)
        batches = [next(stream) for _ in range(per_epoch)]
        assert [[index for index, _ in batch] for batch in batches] == list(sampler)


def test_epoch_stream_keys_depend_on_the_epoch_and_batch_not_on_where_the_stream_started():
    labels = [c for c in range(6) for _ in range(3)]
    from_zero = iter(EpochStream(PKSampler(labels, p=3, k=2, seed=4)))
    per_epoch = len(PKSampler(labels, p=3, k=2, seed=4))
    run = [next(from_zero) for _ in range(3 * per_epoch)]
    resumed = iter(EpochStream(PKSampler(labels, p=3, k=2, seed=4), start_epoch=2))
    assert [next(resumed) for _ in range(per_epoch)] == run[2 * per_epoch :]
    keys = [key for batch in run for _, key in batch]
    assert len(set(keys)) == len(keys)  # every draw of an image is augmented afresh
    other_seed = iter(EpochStream(PKSampler(labels, p=3, k=2, seed=5)))
    assert [key for _, key in next(other_seed)] != [key for _, key in run[0]]
