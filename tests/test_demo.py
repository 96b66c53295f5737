"""The demo generator writes the promised layout, reproducibly, once, and recovers from crashes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image

from retrieval.data.demo import MARKER_NAME, README_NAME, DemoSpec, make_demo_dataset
from retrieval.errors import InputError

SMALL = DemoSpec(n_individuals=4, encounters_per_individual=3, shots_per_encounter=2, image_size=64)


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.jpg"))
    }


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "data", SMALL, progress=False)


def test_layout_and_names(small_root: Path) -> None:
    classes = sorted(p.name for p in small_root.iterdir() if p.is_dir())
    assert classes == ["ind_00", "ind_01", "ind_02", "ind_03"]
    files = sorted(small_root.rglob("*.jpg"))
    assert len(files) == 4 * 3 * 2
    groups: dict[str, set[str]] = {}
    for path in files:
        group, shot = path.stem.rsplit("_", 1)  # SPEC 1.1: the ID is the text before the last _
        assert group.startswith(path.parent.name + "-e")
        groups.setdefault(group, set()).add(shot)
    assert len(groups) == 4 * 3
    assert all(shots == {"0", "1"} for shots in groups.values())
    assert "Seed: 0" in (small_root / README_NAME).read_text(encoding="utf-8")
    marker = json.loads((small_root / MARKER_NAME).read_text(encoding="utf-8"))
    assert marker["n_individuals"] == 4 and marker["image_size"] == 64
    assert not list(small_root.parent.glob(".data.tmp-*"))  # the temp folder was renamed away


def test_images_are_rgb_of_the_right_size(small_root: Path) -> None:
    for path in sorted(small_root.rglob("*.jpg")):
        with Image.open(path) as image:
            assert image.mode == "RGB" and image.size == (64, 64)


def test_same_seed_same_bytes_other_seed_other_images(small_root: Path, tmp_path: Path) -> None:
    again = make_demo_dataset(tmp_path / "again", SMALL, progress=False)
    assert _digests(again) == _digests(small_root)
    other = make_demo_dataset(
        tmp_path / "other", DemoSpec(**{**SMALL.__dict__, "seed": 1}), progress=False
    )
    assert _digests(other).keys() == _digests(small_root).keys()
    assert set(_digests(other).values()).isdisjoint(_digests(small_root).values())


def test_second_call_rewrites_nothing(small_root: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in small_root.rglob("*")}
    assert make_demo_dataset(small_root, SMALL, progress=False) == small_root
    assert {p: p.stat().st_mtime_ns for p in small_root.rglob("*")} == before


def test_folder_without_marker_is_regenerated(tmp_path: Path) -> None:
    spec = DemoSpec(n_individuals=2, encounters_per_individual=1, shots_per_encounter=1, seed=3)
    root = make_demo_dataset(tmp_path / "data", spec, progress=False)
    expected = _digests(root)
    (root / MARKER_NAME).unlink()  # as if the run crashed before finishing
    victim = next(iter(root.rglob("*.jpg")))
    victim.write_bytes(b"half-written")
    make_demo_dataset(root, spec, progress=False)
    assert (root / MARKER_NAME).exists()
    assert _digests(root) == expected


def test_other_spec_replaces_the_old_data_set(tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_demo_dataset(
        root,
        DemoSpec(
            n_individuals=3, encounters_per_individual=1, shots_per_encounter=1, image_size=32
        ),
        progress=False,
    )
    spec = DemoSpec(
        n_individuals=2, encounters_per_individual=1, shots_per_encounter=1, image_size=32
    )
    make_demo_dataset(root, spec, progress=False)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["ind_00", "ind_01"]


def test_foreign_folder_is_refused_not_deleted(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    (root / "jaguar_a").mkdir(parents=True)
    keep = root / "jaguar_a" / "img_1.jpg"
    keep.write_bytes(b"precious")
    with pytest.raises(InputError, match="jaguar_a"):
        make_demo_dataset(root, SMALL, progress=False)
    assert keep.read_bytes() == b"precious"


@pytest.mark.parametrize(
    "field, value",
    [("n_individuals", 1), ("encounters_per_individual", 0), ("image_size", 8), ("seed", -1)],
)
def test_bad_spec_names_the_field(field: str, value: int) -> None:
    with pytest.raises(InputError, match=field):
        DemoSpec(**{field: value})
