"""A run's files (issue 38 item 3): temporary files of killed saves are removed at its start,
and ``--fresh`` trains in a run folder of its own that replaces the previous run only when it
has a best model and a gallery."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import TINY_TRAIN_ARGS, train_tiny
from test_resume_exact import INTERRUPTER, ROOT

import search
import train
from retrieval.cli import default_checkpoint
from retrieval.io import atomic_path, remove_stale_temps
from retrieval.run_folder import current_run, training_run
from retrieval.serving.gallery import Gallery
from retrieval.training.run_files import remove_killed_saves


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_only_temporaries_of_dead_writers_are_removed(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "latest_model.pt") as tmp:
        tmp.write_bytes(b"whole")
        name = tmp.name  # the name atomic_path gives a temporary file
    dead = dead_pid()
    stale = tmp_path / "v3" / name.replace(f".{os.getpid()}.", f".{dead}.")
    live = tmp_path / f".best_model.pt.{os.getpid()}.0123abcd.tmp"  # a save still running
    other = tmp_path / ".notes.tmp"  # not ours
    for path in (stale, live, other):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    assert remove_stale_temps(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and other.exists()
    assert remove_stale_temps(tmp_path / "absent") == []


def test_a_killed_run_json_save_is_cleared_at_the_next_run(tmp_path: Path) -> None:
    """The workdir's own pointer (run.json) is written atomically too; a kill mid-write
    leaves its temporary beside it, which the next run start removes (not those deeper)."""
    dead = dead_pid()
    pointer = tmp_path / f".run.json.{dead}.0123abcd.tmp"
    deeper = tmp_path / "runs" / "t1" / f".run.json.{dead}.0123abcd.tmp"
    for path in (pointer, deeper):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{")
    line = remove_killed_saves(tmp_path, [tmp_path / "runs" / "t0"])
    assert line is not None and ".run.json" in line
    assert not pointer.exists() and deeper.exists()


def test_fresh_trains_in_a_run_folder_of_its_own(tmp_path: Path, capsys) -> None:
    """The previous run is kept whole, nothing of it mixes with the new one, and the pointer
    moves only once the new run has its best model and gallery."""
    _, workdir = train_tiny(tmp_path, epochs=2)
    checkpoints = workdir / "checkpoints"
    before = {p.name: p.read_bytes() for p in checkpoints.iterdir() if p.is_file()}
    shutil.copy(checkpoints / "latest_model.pt", checkpoints / "checkpoint_epoch_10.pt")
    dead = dead_pid()
    killed = [
        checkpoints / f".latest_model.pt.{dead}.0123abcd.tmp",
        workdir / "gallery" / f".current.json.{dead}.89abcdef.tmp",
    ]
    for path in killed:
        path.write_bytes(b"half a file")
    capsys.readouterr()
    train_tiny(tmp_path, epochs=2)
    out = capsys.readouterr().out
    assert "removed 2 temporary file(s) of interrupted saves" in out
    assert not any(path.exists() for path in killed)
    (run,) = (workdir / "runs").iterdir()
    assert f"--fresh: this run trains in {run}" in out and f"searches now use {run}" in out
    assert current_run(workdir) == run
    assert default_checkpoint(workdir, None) == run / "checkpoints" / "best_model.pt"
    kept = {p.name: p.read_bytes() for p in checkpoints.iterdir() if p.is_file()}
    assert kept == {**before, "checkpoint_epoch_10.pt": before["latest_model.pt"]}
    assert not (run / "checkpoints" / "checkpoint_epoch_10.pt").exists()
    assert len((run / "checkpoints" / "train_log.csv").read_text().splitlines()) == 1 + 2
    assert Gallery.load(run / "gallery").size == Gallery.load(workdir / "gallery").size


def test_an_interrupted_fresh_run_leaves_the_previous_run_answering(tmp_path: Path, capsys):
    data, workdir = train_tiny(tmp_path, epochs=2)
    photo = str(next((data / "red").glob("*.jpg")))
    wd = ["--workdir", str(workdir)]
    first = _answer(capsys, photo, *wd)
    argv = ["--data", str(data), *wd, "--epochs", "3", "--warmup_epochs", "1"]
    interrupted = subprocess.run(
        [sys.executable, "-c", INTERRUPTER, "1", *argv, "--fresh", *TINY_TRAIN_ARGS],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert interrupted.returncode == 130, interrupted.stderr[-2000:]
    (run,) = (workdir / "runs").iterdir()
    assert (run / "checkpoints" / "best_model.pt").is_file()  # epoch 1 saved its best
    assert training_run(workdir) == run and current_run(workdir) == workdir
    assert _answer(capsys, photo, *wd) == first  # still the previous run's model and gallery

    assert train.main([*argv, *TINY_TRAIN_ARGS]) == 0  # resumes the new run, then switches
    out = capsys.readouterr().out
    assert f"resuming from {run / 'checkpoints'}" in out and f"searches now use {run}" in out
    assert current_run(workdir) == run and training_run(workdir) == run
    assert _answer(capsys, photo, *wd)["matches"]


def _answer(capsys, *argv: str) -> dict:
    capsys.readouterr()
    assert search.main([*argv, "--format", "json"]) in (0, 1)
    return json.loads(capsys.readouterr().out)[0]
