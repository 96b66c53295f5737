"""The whole data stage: files it writes once, reuse, drift, and the errors a user can hit."""

import json

import pytest
from conftest import make_image

from retrieval.data.prepare import format_prepare_summary, prepare_data
from retrieval.data.splits import load_splits
from retrieval.errors import InputError


def _prepare(data, workdir, **kwargs):
    kwargs.setdefault("min_size", 32)
    return prepare_data(data, workdir, progress=False, **kwargs)


def test_first_run_writes_splits_class_map_and_cache(tiny_data, tmp_path):
    work = tmp_path / "work"
    p = _prepare(tiny_data, work)
    assert p.splits_created
    assert p.class_to_idx == {"amber": 0, "blue": 1, "green": 2, "grey": 3, "magenta": 4, "red": 5}
    assert json.loads((work / "class_to_idx.json").read_text()) == p.class_to_idx
    assert (work / "cache" / "image_check.json").is_file()
    splits = load_splits(work / "splits")
    for name in ("train", "val", "test"):
        records = getattr(p, name)
        assert {r.group for r in records} == set(splits.of(name))
    assert len(p.train) + len(p.val) + len(p.test) == 34
    assert {r.label for r in p.train} == set(p.class_to_idx)  # every class in the gallery
    assert p.report.train.n_images == len(p.train)
    assert not p.drift.has_drift and p.notes == ()
    summary = format_prepare_summary(p)
    assert "data split (created)" in summary and "train" in summary


def test_splits_are_saved_once_and_reused(tiny_data, tmp_path):
    work = tmp_path / "work"
    first = _prepare(tiny_data, work, seed=1)
    stamp = (work / "splits" / "split_meta.json").stat().st_mtime_ns
    again = _prepare(tiny_data, work, seed=2)  # another seed does not re-split ...
    assert not again.splits_created
    assert (again.train, again.val, again.test) == (first.train, first.val, first.test)
    assert (work / "splits" / "split_meta.json").stat().st_mtime_ns == stamp
    assert any("--seed 2 ignored" in n for n in again.notes)  # ... and says so
    assert "NOTE: --seed 2 ignored" in format_prepare_summary(again)


def test_changed_data_is_reported_not_resplit(tiny_data, tmp_path):
    work = tmp_path / "work"
    first = _prepare(tiny_data, work)
    gone = first.val[0].group
    for path in tiny_data.rglob(f"{gone}_*"):
        path.unlink()
    make_image(tiny_data / "red" / "red-new_1.jpg", seed=7)
    again = _prepare(tiny_data, work)
    assert again.drift.new_groups == ("red-new",)
    assert again.drift.missing_groups == (gone,)
    used = {r.group for r in again.train + again.val + again.test}
    assert "red-new" not in used and gone not in used
    assert {r.group for r in again.train} == {r.group for r in first.train} - {gone}
    summary = format_prepare_summary(again)
    assert "WARNING: 1 group(s) in the data are in no stored split" in summary
    assert f"no longer in the data and are dropped (e.g. {gone})" in summary


def test_class_map_mismatch_is_an_input_error(tiny_data, tmp_path):
    work = tmp_path / "work"
    _prepare(tiny_data, work)
    make_image(tiny_data / "violet" / "violet-a_1.jpg")
    with pytest.raises(InputError, match="1 new class") as e:
        _prepare(tiny_data, work)
    assert str(work / "class_to_idx.json") in str(e.value) and "delete" in str(e.value)


def test_damaged_class_map(tiny_data, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "class_to_idx.json").write_text('{"amber": 3}')
    with pytest.raises(InputError, match=r"must map class names to 0\.\.N-1") as e:
        _prepare(tiny_data, work)
    assert str(work / "class_to_idx.json") in str(e.value)


def test_everything_too_small_suggests_min_size(tiny_data, tmp_path):
    with pytest.raises(InputError) as e:
        _prepare(tiny_data, tmp_path / "work", min_size=224)
    msg = str(e.value)
    assert "all 24 of 24 groups were excluded as too small" in msg
    assert "smallest image seen 64x64" in msg and "--min_size 64" in msg
    assert str(tiny_data) in msg


def test_too_small_group_is_excluded_whole_and_listed(tiny_data, tmp_path):
    small = make_image(tiny_data / "red" / "red-g1_3.png", size=(80, 20))
    p = _prepare(tiny_data, tmp_path / "work")
    assert p.check.excluded_groups == ["red-g1"]
    assert not [r for r in p.train + p.val + p.test if r.group == "red-g1"]
    assert p.report.n_excluded_groups == 1
    summary = format_prepare_summary(p)
    assert f"red-g1: 1 small image(s), e.g. {small} (80x20)" in summary


def test_unreadable_file_is_skipped_and_listed(tiny_data, tmp_path):
    bad = tiny_data / "green" / "green-g0_2.jpg"
    bad.write_bytes(b"")
    p = _prepare(tiny_data, tmp_path / "work")
    assert bad not in {r.path for r in p.train + p.val + p.test}
    assert p.report.n_unreadable_files == 1
    assert f"{bad}: empty file (0 bytes)" in format_prepare_summary(p)


def test_nothing_readable(tmp_path):
    for i in range(3):
        path = tmp_path / "data" / "a" / f"x{i}_1.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("not an image")
    with pytest.raises(InputError, match=r"none of the 3 images .* could be read"):
        _prepare(tmp_path / "data", tmp_path / "work")


def test_workdir_that_cannot_be_created(tiny_data, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("I am a file, not a folder")
    work = blocker / "work"
    with pytest.raises(InputError, match="not a writable folder") as e:
        _prepare(tiny_data, work)
    assert str(work) in str(e.value)


def test_summary_caps_long_lists(tmp_path):
    for i in range(25):
        make_image(tmp_path / "data" / f"c{i % 3}" / f"g{i}_1.png", size=(20, 20), seed=i)
    make_image(tmp_path / "data" / "c0" / "big_1.png", size=(40, 40))
    p = _prepare(tmp_path / "data", tmp_path / "work")
    summary = format_prepare_summary(p)
    assert "excluded groups (an image below the minimum size): 25" in summary
    assert "  ... and 5 more" in summary


def test_manifest_source(tiny_data, tmp_path):
    rows = [f"{path.relative_to(tiny_data)},{path.parent.name}" for path in tiny_data.rglob("*_*")]
    csv = tmp_path / "train.csv"
    csv.write_text("filename,label\n" + "\n".join(rows) + "\n")
    p = _prepare(csv, tmp_path / "work", image_root=tiny_data)
    assert len(p.train) + len(p.val) + len(p.test) == 34  # each image its own group
    assert p.report.train.n_groups + p.report.val.n_groups + p.report.test.n_groups == 34


@pytest.mark.shared_data
def test_orl_faces_default_policy_excludes_everything_cleanly(shared_data, tmp_path):
    with pytest.raises(InputError, match=r"all 400 of 400 groups.*smallest image seen 92x112"):
        _prepare(shared_data / "orl_faces", tmp_path / "work", min_size=224)
    p = _prepare(shared_data / "orl_faces", tmp_path / "work", min_size=64)
    assert p.report.n_classes == 40 and p.report.n_classes_in_all_splits == 40
