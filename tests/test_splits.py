"""The splitter: no leakage, stratification, optimal totals (brute force), storage, drift."""

import itertools
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from retrieval.data.records import ImageRecord
from retrieval.data.splits import (
    SplitDrift,
    Splits,
    allocate_counts,
    build_split_report,
    compare_to_data,
    format_report,
    load_splits,
    save_splits,
    split_groups,
)
from retrieval.errors import InputError

RATIOS = [(0.7, 0.15, 0.15), (0.6, 0.2, 0.2), (0.8, 0.1, 0.1), (0.5, 0.25, 0.25), (0.7, 0.1, 0.2)]


def _records(images_per_group: dict[str, list[int]]) -> list[ImageRecord]:
    """class -> [images in group 0, images in group 1, ...] as records (files need not exist)."""
    return [
        ImageRecord(Path(f"/d/{c}/{c}-g{j}_{k}.jpg"), c, f"{c}-g{j}")
        for c, groups in images_per_group.items()
        for j, n_images in enumerate(groups)
        for k in range(n_images)
    ]


def _random_data(seed: int, n_classes: int = 25, max_groups: int = 12) -> list[ImageRecord]:
    rng = np.random.default_rng(seed)
    spec = {
        f"c{i:02d}": rng.integers(1, 4, size=rng.integers(1, max_groups + 1)).tolist()
        for i in range(n_classes)
    }
    return _records(spec)


def _group_counts(records, splits: Splits) -> dict[str, dict[str, int]]:
    """class -> split -> number of groups."""
    where = {g: name for name in ("train", "val", "test") for g in splits.of(name)}
    out: dict[str, dict[str, int]] = {}
    for group, label in {(r.group, r.label) for r in records}:
        per = out.setdefault(label, {"train": 0, "val": 0, "test": 0})
        per[where[group]] += 1
    return out


@pytest.mark.parametrize("seed", range(5))
def test_deterministic_and_independent_of_record_order(seed):
    records = _random_data(seed)
    shuffled = list(records)
    random.Random(seed).shuffle(shuffled)
    assert split_groups(records, seed=seed) == split_groups(shuffled, seed=seed)


def test_another_seed_gives_another_split():
    records = _random_data(0)
    assert split_groups(records, seed=1) != split_groups(records, seed=2)


@pytest.mark.parametrize("seed", range(30))
@pytest.mark.parametrize("ratios", RATIOS)
def test_no_leak_and_every_class_in_train(seed, ratios):
    records = _random_data(seed, n_classes=1 + seed % 17)
    splits = split_groups(records, seed=seed, ratios=ratios)
    sets = [set(splits.of(name)) for name in ("train", "val", "test")]
    assert sum(len(s) for s in sets) == len(set().union(*sets))  # disjoint
    assert set().union(*sets) == {r.group for r in records}  # nothing lost
    assert all(list(splits.of(n)) == sorted(splits.of(n)) for n in ("train", "val", "test"))
    for label, per in _group_counts(records, splits).items():
        n = sum(per.values())
        assert per["train"] >= 1, label
        for name, ratio in zip(("val", "test"), ratios[1:], strict=True):
            ideal = ratio * n
            assert math.floor(ideal + 1e-9) <= per[name] <= math.ceil(ideal - 1e-9), (label, name)


def _brute_force_deviation(counts: list[int], ratio_val: float, ratio_test: float) -> float:
    """Best |V - ideal| + |T - ideal| over per-class floor/ceil choices keeping a train group."""
    options = []
    for n in counts:
        fv, ft = math.floor(ratio_val * n + 1e-9), math.floor(ratio_test * n + 1e-9)
        cv, ct = math.ceil(ratio_val * n - 1e-9), math.ceil(ratio_test * n - 1e-9)
        options.append([(v, t) for v in {fv, cv} for t in {ft, ct} if v + t <= n - 1])
    n_total = sum(counts)
    return min(
        abs(sum(v for v, _ in combo) - ratio_val * n_total)
        + abs(sum(t for _, t in combo) - ratio_test * n_total)
        for combo in itertools.product(*options)
    )


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("ratios", RATIOS)
def test_totals_are_as_close_as_integer_counts_allow(seed, ratios):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 8, size=rng.integers(1, 8)).tolist()
    got = allocate_counts(counts, ratio_val=ratios[1], ratio_test=ratios[2], rng=rng)
    n_total = sum(counts)
    deviation = abs(sum(v for v, _ in got) - ratios[1] * n_total) + abs(
        sum(t for _, t in got) - ratios[2] * n_total
    )
    assert deviation == pytest.approx(_brute_force_deviation(counts, ratios[1], ratios[2]))
    assert all(v + t <= n - 1 for (v, t), n in zip(got, counts, strict=True))


def test_large_classes_round_totals_to_nearest():
    records = _records({f"c{i}": [1] * (5 + i % 9) for i in range(40)})  # 5-13 groups each
    splits = split_groups(records, seed=0)
    n_groups = len({r.group for r in records})
    assert n_groups == 350  # ideal 52.5: either neighbour is as close
    assert abs(len(splits.val) - 52.5) == 0.5 and abs(len(splits.test) - 52.5) == 0.5


def test_allocation_by_hand():
    # 12 groups: ideal 1.8 val and 1.8 test. Class 0 (10 groups, ideal 1.5 each) gets floor 1
    # of both, and is the only class that can give more (the others have one group, which
    # must stay in train): it gives one more to each, totals 2 and 2.
    rng = np.random.default_rng(0)
    assert allocate_counts([10, 1, 1], ratio_val=0.15, ratio_test=0.15, rng=rng) == [
        (2, 2),
        (0, 0),
        (0, 0),
    ]
    # Ten 2-group classes: ideal 3 + 3; each class can give one group to val OR test.
    got = allocate_counts([2] * 10, ratio_val=0.15, ratio_test=0.15, rng=rng)
    assert sum(v for v, _ in got) == 3 and sum(t for _, t in got) == 3
    assert set(got) == {(1, 0), (0, 1), (0, 0)}
    # Ratios of 0: nothing held out, whatever the class sizes.
    got = allocate_counts([1, 5, 9], ratio_val=0.0, ratio_test=0.0, rng=rng)
    assert got == [(0, 0)] * 3


def test_no_class_size_is_favoured():
    # 20 classes of 3 groups (ideal 0.45 val) and 20 of 4 (ideal 0.6): over many seeds each
    # class's mean val count is near its ideal, instead of always 0 for the 3-group classes.
    counts = [3] * 20 + [4] * 20
    runs = np.array(
        [
            allocate_counts(counts, ratio_val=0.15, ratio_test=0.15, rng=np.random.default_rng(s))
            for s in range(300)
        ]
    )  # (seeds, classes, 2)
    assert (runs.sum(axis=1) == 21).all()  # totals exact every time: 0.15 * 140 = 21
    mean_val = runs[:, :, 0].mean(axis=0)
    assert 0.3 < mean_val[:20].mean() < 0.5 and 0.55 < mean_val[20:].mean() < 0.75
    assert mean_val.min() > 0.2  # every single class does reach val sometimes


def test_small_classes_are_train_only_and_reported():
    records = _records({"solo": [3], "pair": [1, 1], "big": [1] * 20})
    splits = split_groups(records, seed=3)
    per = _group_counts(records, splits)
    assert per["solo"] == {"train": 1, "val": 0, "test": 0}
    assert per["big"] == {"train": 14, "val": 3, "test": 3}
    report = build_split_report(records, splits, n_excluded_groups=2, n_unreadable_files=1)
    train_only = int(per["pair"]["train"] == 2) + 1
    assert report.n_train_only_classes == train_only
    assert report.n_classes == 3 and report.n_excluded_groups == 2
    assert report.train.n_images == sum(1 for r in records if r.group in set(splits.train))
    text = format_report(report)
    assert "split" in text and "images" in text and f"{train_only} train-only" in text
    assert "2 group(s) below the minimum size, 1 unreadable file(s)" in text


def test_report_counts_by_hand():
    records = _records({"a": [2, 1, 1], "b": [1, 3]})
    splits = Splits(train=("a-g0", "b-g0"), val=("a-g1",), test=("a-g2", "b-g1"))
    report = build_split_report(records, splits)
    assert (report.train.n_images, report.train.n_groups, report.train.n_classes) == (3, 2, 2)
    assert (report.val.n_images, report.val.n_groups, report.val.n_classes) == (1, 1, 1)
    assert (report.test.n_images, report.test.n_groups, report.test.n_classes) == (4, 2, 2)
    assert report.n_classes_in_all_splits == 1 and report.n_train_only_classes == 0


@pytest.mark.parametrize(
    "ratios", [(0.7, 0.2, 0.2), (0.7, -0.1, 0.4), (0.5, 0.5), (float("nan"), 0.5, 0.5)]
)
def test_bad_ratios(ratios):
    with pytest.raises(InputError, match="ratios"):
        split_groups(_random_data(0), seed=0, ratios=ratios)


def test_group_with_two_classes_is_an_input_error():
    records = [
        ImageRecord(Path("/d/a/x_1.jpg"), "a", "x"),
        ImageRecord(Path("/d/b/x_2.jpg"), "b", "x"),
    ]
    with pytest.raises(InputError, match="group 'x' has images of two classes"):
        split_groups(records, seed=0)


def test_nothing_to_split():
    with pytest.raises(InputError, match="no images"):
        split_groups([], seed=0)


# Storage and drift ------------------------------------------------------------------------


def test_save_then_load_round_trip(tmp_path):
    splits = split_groups(_random_data(4), seed=4)
    directory = tmp_path / "splits"
    assert load_splits(directory) is None
    save_splits(splits, directory, meta={"seed": 4, "ratios": [0.7, 0.15, 0.15], "source": "x"})
    assert load_splits(directory) == splits
    assert json.loads((directory / "val_ids.json").read_text()) == list(splits.val)
    meta = json.loads((directory / "split_meta.json").read_text())
    assert meta["seed"] == 4 and meta["source"] == "x" and "created" in meta
    assert meta["counts"] == {
        "train": len(splits.train),
        "val": len(splits.val),
        "test": len(splits.test),
    }
    assert sorted(p.name for p in directory.iterdir()) == [
        "split_meta.json",
        "test_ids.json",
        "train_ids.json",
        "val_ids.json",
    ]  # no temporary files left behind


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda d: (d / "val_ids.json").write_text("[1, 2"), "val_ids.json is not valid JSON"),
        (
            lambda d: (d / "test_ids.json").write_text('{"a": 1}'),
            "test_ids.json must be a JSON list",
        ),
        (lambda d: (d / "train_ids.json").unlink(), "incomplete splits"),
        (lambda d: (d / "val_ids.json").write_text('["a-g0"]'), "both train and val"),
        (lambda d: (d / "val_ids.json").write_text('["z", "z"]'), "more than once"),
    ],
)
def test_damaged_splits_are_reported_with_the_fix(tmp_path, damage, match):
    directory = tmp_path / "splits"
    save_splits(Splits(("a-g0", "b-g0"), ("a-g1",), ("b-g1",)), directory, meta={})
    damage(directory)
    with pytest.raises(InputError, match=match) as e:
        load_splits(directory)
    assert str(directory) in str(e.value) and "delete the splits/ folder" in str(e.value)


def test_drift_names_new_and_missing_groups():
    splits = Splits(("a", "b"), ("c",), ("d",))
    drift = compare_to_data(splits, {"a", "b", "c", "e", "f"})
    assert drift == SplitDrift(new_groups=("e", "f"), missing_groups=("d",))
    assert drift.has_drift
    assert not compare_to_data(splits, {"a", "b", "c", "d"}).has_drift


@pytest.mark.shared_data
def test_dogfacenet_split(shared_data):
    from retrieval.data.scan import scan_folder

    records = scan_folder(shared_data / "dogfacenet")
    splits = split_groups(records, seed=42)
    n = len(records)  # one group per image
    assert abs(len(splits.val) - 0.15 * n) <= 1 and abs(len(splits.test) - 0.15 * n) <= 1
    report = build_split_report(records, splits)
    assert report.train.n_classes == 1267
    assert report.n_train_only_classes > 0  # 2-photo dogs cannot be everywhere: reported
