"""Group-aware, stratified train/val/test split, stored once and reused (SPEC 1.2-1.3).

The rule, **group split first, stratified second**:

1. The unit is the group (one object, possibly many images): a group never crosses splits.
2. Per class, in sorted class order, the class's groups are shuffled with
   ``numpy.random.default_rng(seed)``. The first shuffled group always goes to train: a query
   whose class has no gallery image can never be retrieved in a closed-set evaluation.
3. How many of a class's other groups go to val and to test: with ``n`` groups, the ideal val
   count is ``ratio_val * n``; the class gets its floor or its ceil (the same for test). The
   number of classes that get the ceil is chosen so that the totals are as close to
   ``ratio * total_groups`` as these per-class limits allow (an exact minimum of
   ``|n_val - ideal_val| + |n_test - ideal_test|``). Which classes get it is a seeded weighted
   random choice, the chance rising with the fractional part of the ideal count, so that small
   classes also reach val and test and no class size is favoured systematically.
4. The last train group of a class is never taken: a class of 2 groups can give one group to
   val *or* to test, never both, and a class of one group is train-only. So is a class whose
   val and test shares are under one group each when rule 3's draw gives it no extra group.
   Such classes are counted in the report (``n_train_only_classes``), not hidden.

The result depends only on the seed and the set of (group, class) pairs, not on record order.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from retrieval.data.records import ImageRecord
from retrieval.errors import InputError
from retrieval.io import read_json, write_json_atomic

SPLIT_NAMES = ("train", "val", "test")
DEFAULT_RATIOS = (0.7, 0.15, 0.15)  # train, val, test (SPEC 1.2)
_EPS = 1e-9  # 0.15 * 20 is 3.0000000000000004: floor/ceil must not see a fraction there


@dataclass(frozen=True)
class Splits:
    """Group IDs per split, each tuple sorted; disjoint."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def of(self, name: str) -> tuple[str, ...]:
        """The groups of split ``name`` (one of ``SPLIT_NAMES``)."""
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    def all_groups(self) -> set[str]:
        return set(self.train) | set(self.val) | set(self.test)


def _class_groups(records: Sequence[ImageRecord]) -> dict[str, list[str]]:
    """Class -> its sorted group IDs; a group with two classes is a user labelling error."""
    group_class: dict[str, str] = {}
    for r in records:
        previous = group_class.setdefault(r.group, r.label)
        if previous != r.label:
            raise InputError(
                f"group {r.group!r} has images of two classes ({previous} and {r.label}); "
                "a group is one object: relabel or rename those files"
            )
    by_class: dict[str, list[str]] = defaultdict(list)
    for group, label in group_class.items():
        by_class[label].append(group)
    return {label: sorted(groups) for label, groups in sorted(by_class.items())}


def _check_ratios(ratios: tuple[float, float, float]) -> tuple[float, float, float]:
    if len(ratios) != 3 or any(not math.isfinite(r) or r < 0 for r in ratios):
        raise InputError(f"split ratios must be three numbers >= 0, got {ratios!r}")
    if abs(sum(ratios) - 1.0) > 1e-6:
        raise InputError(f"split ratios must sum to 1 (train, val, test), got {ratios!r}")
    return (float(ratios[0]), float(ratios[1]), float(ratios[2]))


def _class_bounds(n: int, ratios: tuple[float, float]) -> tuple[list[int], list[int]]:
    """Per split (val, test): floor and ceil of ``ratio * n``, floors cut so train keeps one."""
    low = [math.floor(r * n + _EPS) for r in ratios]
    high = [math.ceil(r * n - _EPS) for r in ratios]
    while low[0] + low[1] > n - 1:  # only with extreme ratios
        k = int(low[1] > low[0])
        low[k] -= 1
        high[k] = low[k]
    return low, high


def _best_totals(
    wanted: tuple[float, float], n_only: tuple[int, int], n_free: int, n_either: int
) -> tuple[int, int]:
    """Numbers of extra (ceil) groups (X, Y) for val and test closest to ``wanted``.

    Extras come from classes that can take only a val extra / only a test extra
    (``n_only``), both (``n_free``), or one of the two (``n_either``: the last train group
    would go otherwise). Exact: tries every X, with the best Y for it.
    """
    best = None
    for x in range(n_only[0] + n_free + n_either + 1):
        y_max = n_only[1] + n_free + n_either - max(0, x - n_only[0] - n_free)
        for y in {min(y_max, max(0, math.floor(wanted[1]))), min(y_max, math.ceil(wanted[1]))}:
            dev = (abs(x - wanted[0]), abs(y - wanted[1]))
            key = (round(dev[0] + dev[1], 9), round(max(dev), 9), -x, -y)
            best = min(best, (key, x, y)) if best else (key, x, y)
    return best[1], best[2]


def allocate_counts(
    group_counts: Sequence[int],
    *,
    ratio_val: float,
    ratio_test: float,
    rng: np.random.Generator,
) -> list[tuple[int, int]]:
    """(val, test) group counts per class; see rule 3 of the module docstring.

    ``group_counts[c]`` is class c's number of groups. Every class keeps one group for train.
    """
    ratios = (ratio_val, ratio_test)
    bounds = [_class_bounds(n, ratios) for n in group_counts]
    got = [list(low) for low, _ in bounds]
    can = [[high[k] > low[k] for k in range(2)] for low, high in bounds]
    slack = [n - 1 - low[0] - low[1] for n, (low, _) in zip(group_counts, bounds, strict=True)]
    classes = range(len(group_counts))
    only = [sum(can[c][k] and not can[c][1 - k] and slack[c] >= 1 for c in classes) for k in (0, 1)]
    n_free = sum(all(can[c]) and slack[c] >= 2 for c in classes)
    either = {c for c in classes if all(can[c]) and slack[c] == 1}
    n_total = sum(group_counts)
    wanted = tuple(r * n_total - sum(g[k] for g in got) for k, r in enumerate(ratios))
    extra = _best_totals(wanted, (only[0], only[1]), n_free, len(either))
    # Weighted random order (Efraimidis-Spirakis keys): a larger fractional part, a better
    # chance of the ceil, so each class's expected count stays near ratio * n.
    u = np.maximum(rng.random((len(group_counts), 2)), 1e-300)
    # Val may use only so many either-or classes that test can still reach its total.
    caps = (len(either) - max(0, extra[1] - only[1] - n_free), len(either))
    for k in (0, 1):
        candidates = [c for c in classes if can[c][k] and slack[c] >= 1]
        key = {
            c: math.log(u[c, k]) / (ratios[k] * group_counts[c] - bounds[c][0][k])
            for c in candidates
        }
        taken = used_either = 0
        for c in sorted(candidates, key=lambda c: -key[c]):
            if taken == extra[k]:
                break
            if got[c][0] + got[c][1] >= group_counts[c] - 1 or (
                c in either and used_either == caps[k]
            ):
                continue
            got[c][k] += 1
            taken += 1
            used_either += c in either
        assert taken == extra[k], "allocation totals are feasible by construction"
    return [(v, t) for v, t in got]


def split_groups(
    records: Sequence[ImageRecord],
    *,
    seed: int,
    ratios: tuple[float, float, float] = DEFAULT_RATIOS,
) -> Splits:
    """Seeded group split, stratified by class, by the rule in the module docstring."""
    _, ratio_val, ratio_test = _check_ratios(ratios)
    by_class = _class_groups(records)
    if not by_class:
        raise InputError("no images to split; check --data")
    rng = np.random.default_rng(seed)
    shuffled = [[groups[i] for i in rng.permutation(len(groups))] for groups in by_class.values()]
    counts = allocate_counts(
        [len(g) for g in shuffled], ratio_val=ratio_val, ratio_test=ratio_test, rng=rng
    )
    out: dict[str, list[str]] = {name: [] for name in SPLIT_NAMES}
    for groups, (n_val, n_test) in zip(shuffled, counts, strict=True):
        out["val"] += groups[1 : 1 + n_val]
        out["test"] += groups[1 + n_val : 1 + n_val + n_test]
        out["train"] += [groups[0], *groups[1 + n_val + n_test :]]
    return Splits(**{name: tuple(sorted(ids)) for name, ids in out.items()})


@dataclass(frozen=True)
class SplitCounts:
    """Size of one split."""

    n_images: int
    n_groups: int
    n_classes: int


@dataclass(frozen=True)
class SplitReport:
    """What the split looks like, for the run log (SPEC 1.2: small classes are reported)."""

    train: SplitCounts
    val: SplitCounts
    test: SplitCounts
    n_classes: int
    n_train_only_classes: int  # classes with no val and no test group
    n_single_group_classes: int  # of those, classes of one group: train keeps it (rule 4)
    n_classes_in_all_splits: int
    n_excluded_groups: int = 0  # too small (image policy)
    n_unreadable_files: int = 0


def build_split_report(
    records: Sequence[ImageRecord],
    splits: Splits,
    *,
    n_excluded_groups: int = 0,
    n_unreadable_files: int = 0,
) -> SplitReport:
    """Count images, groups and classes per split; records in no split are not counted."""
    per: dict[str, SplitCounts] = {}
    classes_in: dict[str, set[str]] = {}
    for name in SPLIT_NAMES:
        ids = set(splits.of(name))
        rs = [r for r in records if r.group in ids]
        classes_in[name] = {r.label for r in rs}
        per[name] = SplitCounts(len(rs), len({r.group for r in rs}), len(classes_in[name]))
    all_classes = {r.label for r in records}
    train_only = classes_in["train"] - classes_in["val"] - classes_in["test"]
    train_groups: dict[str, set[str]] = defaultdict(set)
    train_ids = set(splits.train)
    for r in records:
        if r.label in train_only and r.group in train_ids:
            train_groups[r.label].add(r.group)
    return SplitReport(
        **per,
        n_classes=len(all_classes),
        n_train_only_classes=len(train_only),
        n_single_group_classes=sum(len(g) == 1 for g in train_groups.values()),
        n_classes_in_all_splits=len(classes_in["train"] & classes_in["val"] & classes_in["test"]),
        n_excluded_groups=n_excluded_groups,
        n_unreadable_files=n_unreadable_files,
    )


def format_report(report: SplitReport) -> str:
    """A small table of the split, then the class coverage and exclusion counts."""
    rows = [(name, getattr(report, name)) for name in SPLIT_NAMES]
    lines = [f"{'split':<6} {'images':>8} {'groups':>8} {'classes':>8}"]
    for name, c in rows:
        lines.append(f"{name:<6} {c.n_images:>8} {c.n_groups:>8} {c.n_classes:>8}")
    total_images = sum(c.n_images for _, c in rows)
    total_groups = sum(c.n_groups for _, c in rows)
    lines.append(f"{'total':<6} {total_images:>8} {total_groups:>8} {report.n_classes:>8}")
    lines.append(
        f"classes: {report.n_classes} in total, {report.n_classes_in_all_splits} in all three "
        f"splits, {report.n_train_only_classes} train-only{_train_only_reasons(report)}"
    )
    lines.append(
        f"excluded: {report.n_excluded_groups} group(s) below the minimum size, "
        f"{report.n_unreadable_files} unreadable file(s)"
    )
    return "\n".join(lines)


def _train_only_reasons(report: SplitReport) -> str:
    """Why classes are train-only (module docstring, rules 3-4): one group, or not drawn."""
    single = report.n_single_group_classes
    drawn = report.n_train_only_classes - single
    reasons = [f"{single} of one group, which train keeps"] if single else []
    if drawn:
        reasons.append(
            f"{drawn} not drawn for val/test: their share of each is under one group, "
            "and the seeded draw that meets the split ratios gave them none"
        )
    return f" ({'; '.join(reasons)})" if reasons else ""


# Storage ----------------------------------------------------------------------------------

_FIX = "delete the splits/ folder to re-split (or restore the file)"


def save_splits(splits: Splits, directory: Path, *, meta: dict) -> None:
    """Write ``{train,val,test}_ids.json`` and ``split_meta.json`` (meta + time + counts)."""
    directory = Path(directory)
    for name in SPLIT_NAMES:
        write_json_atomic(directory / f"{name}_ids.json", list(splits.of(name)))
    full_meta = {
        **meta,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "counts": {name: len(splits.of(name)) for name in SPLIT_NAMES},
    }
    write_json_atomic(directory / "split_meta.json", full_meta)  # last: marks a complete set


def _read_ids(path: Path) -> tuple[str, ...]:
    ids = read_json(path, fix=_FIX)
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise InputError(f"{path} must be a JSON list of group ID strings; {_FIX}")
    if len(set(ids)) != len(ids):
        raise InputError(f"{path} lists a group ID more than once; {_FIX}")
    return tuple(sorted(ids))


def load_splits(directory: Path) -> Splits | None:
    """The stored splits, or None when none are stored; damaged files are an ``InputError``."""
    directory = Path(directory)
    paths = {name: directory / f"{name}_ids.json" for name in SPLIT_NAMES}
    present = [name for name, p in paths.items() if p.exists()]
    if not present:
        return None
    if len(present) < len(SPLIT_NAMES):
        missing = ", ".join(str(p) for n, p in paths.items() if n not in present)
        raise InputError(f"incomplete splits in {directory}: missing {missing}; {_FIX}")
    splits = Splits(**{name: _read_ids(p) for name, p in paths.items()})
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = set(splits.of(a)) & set(splits.of(b))
        if both:
            raise InputError(
                f"stored splits in {directory} put {len(both)} group(s) in both {a} and {b} "
                f"(e.g. {sorted(both)[0]!r}); {_FIX}"
            )
    return splits


@dataclass(frozen=True)
class SplitDrift:
    """Differences between the stored splits and the data found now (SPEC 1.3)."""

    new_groups: tuple[str, ...]  # in the data, in no stored split: used in no split
    missing_groups: tuple[str, ...]  # in a stored split, no longer in the data: dropped

    @property
    def has_drift(self) -> bool:
        return bool(self.new_groups or self.missing_groups)


def compare_to_data(splits: Splits, group_ids: set[str]) -> SplitDrift:
    """What changed since the splits were saved; the caller warns, and never re-splits."""
    stored = splits.all_groups()
    return SplitDrift(
        new_groups=tuple(sorted(set(group_ids) - stored)),
        missing_groups=tuple(sorted(stored - set(group_ids))),
    )
