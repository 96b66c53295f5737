"""A run's files at its start (issue 38 item 3): temporary files of killed saves are removed,
and ``--fresh`` keeps the previous run's checkpoints aside instead of mixing them in."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from conftest import train_tiny

from retrieval.io import atomic_path, remove_stale_temps


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


def test_fresh_keeps_the_previous_run_aside_and_stale_saves_go(tmp_path: Path, capsys) -> None:
    _, workdir = train_tiny(tmp_path, epochs=2)
    checkpoints = workdir / "checkpoints"
    old_best = (checkpoints / "best_model.pt").read_bytes()
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
    (previous,) = (checkpoints / "previous").iterdir()
    assert f"--fresh: the previous run's checkpoints and log are kept in {previous}" in out
    kept = {p.name for p in previous.iterdir()}
    assert kept == {
        "best_model.pt",
        "latest_model.pt",
        "checkpoint_epoch_10.pt",
        "train_log.csv",
        "config.json",
    }
    assert (previous / "best_model.pt").read_bytes() == old_best
    assert not (checkpoints / "checkpoint_epoch_10.pt").exists()
    assert len((checkpoints / "train_log.csv").read_text().splitlines()) == 1 + 2
