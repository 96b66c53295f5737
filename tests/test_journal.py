"""Enrolments are the gallery's state, not a cache (issue 38 item 1): the journal, its replay
into rebuilt galleries, a gallery that catches up after a killed enrolment, and going back to
an earlier gallery version."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import CLASS_COLOURS, TINY_TRAIN_ARGS, make_image, train_tiny

import search
import train
from retrieval import checkpoint as ckpt
from retrieval.serving.gallery import Gallery, gallery_versions
from retrieval.serving.journal import (
    append_entry,
    effective,
    journal_path,
    pending,
    read_entries,
)

ENROLL_A = {"event": "enroll", "photos": [["/a.jpg", "a"]]}
ENROLL_B = {"event": "enroll", "photos": [["/b.jpg", "b"]]}


def test_a_torn_last_line_is_skipped_and_the_next_entry_starts_its_own(tmp_path):
    assert append_entry(tmp_path, ENROLL_A) == 1
    with journal_path(tmp_path).open("a") as f:
        f.write('{"event": "enr')  # killed mid-append: never confirmed
    assert [e["photos"] for e in read_entries(tmp_path)] == [ENROLL_A["photos"]]
    assert append_entry(tmp_path, ENROLL_B) == 2
    assert [e["photos"] for e in read_entries(tmp_path)] == [
        ENROLL_A["photos"],
        ENROLL_B["photos"],
    ]


def test_a_restore_undoes_what_came_after_its_position():
    remove = {"event": "remove", "class": "x"}
    entries = [ENROLL_A, ENROLL_B, {"event": "restore", "position": 1}, remove]
    assert effective(entries) == [ENROLL_A, remove]
    assert pending(entries, 0) == [ENROLL_A, remove]  # a gallery just built
    assert pending(entries, 3) == [remove]  # the restored gallery, before the removal
    assert pending(entries, 2) is None  # holds B, which the restore undid: rebuild it


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    return train_tiny(tmp_path_factory.mktemp("journal"))


@pytest.fixture
def workdir(trained, tmp_path) -> Path:
    """A copy of the trained workdir, so each test changes its own gallery."""
    copy = tmp_path / "work"
    shutil.copytree(trained[1], copy)
    return copy


def _newcomer(root: Path, name: str = "violet", n: int = 3) -> Path:
    for j in range(n):
        make_image(root / name / f"{name}-g{j}_1.jpg", seed=900 + j, colour=(140, 0, 255))
    return root


def _classes(workdir: Path) -> set[str]:
    return Gallery.load(workdir / "gallery").live_classes()


def test_rebuild_and_retraining_replay_enrolments_and_removals(trained, workdir, tmp_path, capsys):
    data, _ = trained
    wd = ["--workdir", str(workdir)]
    gone = sorted(CLASS_COLOURS)[0]
    assert search.main(["--enroll", str(_newcomer(tmp_path / "new")), *wd]) == 0
    assert search.main(["--remove", gone, *wd]) == 0
    before = Gallery.load(workdir / "gallery")
    assert "violet" in before.live_classes() and gone not in before.live_classes()
    capsys.readouterr()

    assert search.main(["--rebuild_gallery", *wd]) == 0
    err = capsys.readouterr().err
    assert "replayed 2 enrolment change(s)" in err and "3 photo(s) enrolled" in err
    rebuilt = Gallery.load(workdir / "gallery")
    assert rebuilt.live_classes() == before.live_classes()
    assert rebuilt.live_paths() == before.live_paths()

    # a longer training run rebuilds the gallery with its best model: nothing is lost
    argv = ["--data", str(data), "--workdir", str(workdir), "--epochs", "4"]
    assert train.main([*argv, "--warmup_epochs", "1", *TINY_TRAIN_ARGS]) == 0
    assert "replayed 2 enrolment change(s)" in capsys.readouterr().err
    assert Gallery.load(workdir / "gallery").live_paths() == before.live_paths()


def test_an_unreadable_enrolled_photo_is_reported_not_dropped(workdir, tmp_path, capsys):
    wd = ["--workdir", str(workdir)]
    folder = _newcomer(tmp_path / "new")
    assert search.main(["--enroll", str(folder), *wd]) == 0
    lost = sorted((folder / "violet").glob("*.jpg"))[0]
    lost.unlink()
    capsys.readouterr()
    assert search.main(["--rebuild_gallery", *wd]) == 0
    err = capsys.readouterr().err
    assert "1 enrolled photo(s) cannot be read now" in err and str(lost) in err
    assert "violet" in _classes(workdir)
    assert read_entries(workdir)[0]["photos"][0][0] == str(lost)  # kept for a later rebuild


def test_a_gallery_killed_before_its_save_catches_up_at_the_next_open(workdir, tmp_path, capsys):
    """The journal entry is written before the gallery: a kill between the two loses
    nothing, the next search replays the entry."""
    folder = _newcomer(tmp_path / "new")
    photos = [[str(p), "violet"] for p in sorted((folder / "violet").glob("*.jpg"))]
    append_entry(workdir, {"event": "enroll", "photos": photos})
    query = photos[0][0]
    assert search.main([query, "--workdir", str(workdir), "--format", "json"]) in (0, 1)
    captured = capsys.readouterr()
    assert "replayed 1 enrolment change(s)" in captured.err
    assert json.loads(captured.out)[0]["matches"][0]["class"] == "violet"
    assert Gallery.load(workdir / "gallery").journal == 1


def test_old_versions_are_kept_and_one_can_go_back(workdir, tmp_path, capsys):
    wd = ["--workdir", str(workdir)]
    assert search.main(["--keep_galleries", "3", *wd]) == 0
    first = Gallery.load(workdir / "gallery")
    for name in ("violet", "teal"):
        assert search.main(["--enroll", str(_newcomer(tmp_path / name, name)), *wd]) == 0
    versions = gallery_versions(workdir / "gallery")
    assert len(versions) == 3  # the setting is stored with the gallery
    capsys.readouterr()
    assert search.main(["--gallery_versions", *wd]) == 0
    listing = capsys.readouterr().out
    assert all(v in listing for v in versions) and f"* {versions[-1]}" in listing

    assert search.main(["--restore_gallery", versions[1], *wd]) == 0  # before teal came
    restored = Gallery.load(workdir / "gallery")
    assert restored.live_classes() == first.live_classes() | {"violet"}
    # the undone enrolments stay undone when the gallery is rebuilt
    assert search.main(["--rebuild_gallery", *wd]) == 0
    assert "violet" in _classes(workdir) and "teal" not in _classes(workdir)

    assert search.main(["--restore_gallery", "v-nope", *wd]) == 2
    assert "no gallery version 'v-nope'" in capsys.readouterr().err


def test_enrolments_made_before_the_journal_are_seeded_from_the_gallery(workdir, tmp_path):
    """A workdir from before the journal: its gallery's enrolled items (IDs after the
    train split's) and removed classes start the journal on the first rebuild."""
    wd = ["--workdir", str(workdir)]
    gone = sorted(CLASS_COLOURS)[0]
    assert search.main(["--enroll", str(_newcomer(tmp_path / "new")), *wd]) == 0
    assert search.main(["--remove", gone, *wd]) == 0
    before = Gallery.load(workdir / "gallery")
    journal_path(workdir).unlink()  # as if written before the journal existed
    assert search.main(["--rebuild_gallery", "--remove", "violet", *wd]) == 0
    entries = read_entries(workdir)
    assert [e["event"] for e in entries] == ["enroll", "remove", "remove"]
    assert entries[0]["seeded"] and {p for p, _ in entries[0]["photos"]} == (
        before.live_paths() - Gallery.load(workdir / "gallery").live_paths()
    )
    assert _classes(workdir) == before.live_classes() - {"violet"}


def test_a_killed_save_is_no_version_and_the_next_save_removes_it(workdir, tmp_path, capsys):
    root = workdir / "gallery"
    half = root / "v00000000-000000-000000000"  # sorts first: a save killed before meta.json
    half.mkdir()
    (half / "index.faiss").write_bytes(b"half a file")
    assert half.name not in gallery_versions(root)
    assert search.main(["--gallery_versions", "--workdir", str(workdir)]) == 0
    assert half.name not in capsys.readouterr().out
    wd = ["--workdir", str(workdir)]
    assert search.main(["--enroll", str(_newcomer(tmp_path / "new")), *wd]) == 0
    assert not half.exists()


def test_a_best_model_newer_than_its_gallery_gets_the_gallery_rebuilt(workdir, tmp_path, capsys):
    """Training stopped between saving a better model and indexing with it: the first search
    rebuilds the gallery for the run's own best model (enrolments replayed), where a gallery
    for another --checkpoint is refused (tests/test_enroll.py)."""
    wd = ["--workdir", str(workdir)]
    assert search.main(["--enroll", str(_newcomer(tmp_path / "new")), *wd]) == 0
    best = workdir / "checkpoints" / "best_model.pt"
    state = ckpt.load_checkpoint(best)
    with torch.no_grad():
        state["model"]["neck.weight"] += 0.01
    state["model_hash"] = ckpt.weights_hash(state["model"])
    ckpt.save_atomic(state, best)
    before = Gallery.load(workdir / "gallery")
    photo = str(sorted((tmp_path / "new" / "violet").glob("*.jpg"))[0])
    capsys.readouterr()
    assert search.main([photo, *wd, "--format", "json", "--local_match", "off"]) in (0, 1)
    captured = capsys.readouterr()
    assert "is newer than the gallery" in captured.err
    assert json.loads(captured.out)[0]["matches"][0]["class"] == "violet"
    rebuilt = Gallery.load(workdir / "gallery")
    assert rebuilt.fingerprint != before.fingerprint
    assert rebuilt.live_paths() == before.live_paths()
