"""A --seed other than the stored splits' is never silent (issue 38 item 5): refused with the
fix, or with ``--resplit`` the splits are made again with it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import train
from retrieval.data.prepare import prepare_data
from retrieval.errors import InputError


def split_seed(workdir: Path) -> int:
    return json.loads((workdir / "splits" / "split_meta.json").read_text())["seed"]


def test_a_changed_seed_is_noted_refused_or_resplit(tiny_data: Path, tmp_path: Path) -> None:
    def prepare(seed: int, seed_change: str):
        return prepare_data(
            tiny_data, tmp_path, min_size=32, seed=seed, progress=False, seed_change=seed_change
        )

    first = prepare(1, "refuse")
    assert first.splits_created and split_seed(tmp_path) == 1
    noted = prepare(2, "note")
    assert not noted.splits_created and "made with seed 1" in noted.notes[0]
    with pytest.raises(InputError, match="add --resplit to split the data again with seed 2"):
        prepare(2, "refuse")
    again = prepare(2, "resplit")
    assert again.splits_created and not again.notes and split_seed(tmp_path) == 2
    assert prepare(2, "refuse").train == again.train


def test_train_refuses_a_new_seed_without_resplit(tiny_data: Path, tmp_path: Path, capsys):
    argv = ["--data", str(tiny_data), "--workdir", str(tmp_path), "--min_size", "32"]
    argv += ["--prepare_only", "--fresh"]
    assert train.main([*argv, "--seed", "7"]) == 0
    capsys.readouterr()
    assert train.main([*argv, "--seed", "11"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--seed 11 differs from seed 7" in err[0] and "--resplit" in err[0]
    assert split_seed(tmp_path) == 7
    assert train.main([*argv, "--seed", "11", "--resplit"]) == 0
    assert "data split (created)" in capsys.readouterr().out
    assert split_seed(tmp_path) == 11


def test_resplit_under_a_resumable_run_needs_fresh(tiny_data: Path, tmp_path: Path, capsys):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest_model.pt").write_bytes(b"a run to resume")
    argv = ["--data", str(tiny_data), "--workdir", str(tmp_path), "--min_size", "32"]
    assert train.main([*argv, "--prepare_only", "--resplit"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot resume on; add --fresh" in err[0]
    assert not (tmp_path / "splits").exists()
