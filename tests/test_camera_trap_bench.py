"""bench/camera_trap_data.py: the demo's coats at a few fixed camera sites shared by all."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from camera_trap_data import main, site_backgrounds


def test_every_individual_gets_its_visits_and_shots(tmp_path):
    out = tmp_path / "trap"
    argv = ["--out", str(out), "--individuals", "3", "--encounters", "2", "--shots", "2"]
    assert main([*argv, "--sites", "2", "--size", "64"]) == 0
    folders = sorted(p.name for p in out.iterdir())
    assert folders == ["ind_00", "ind_01", "ind_02"]
    assert all(len(list((out / f).glob("*.jpg"))) == 4 for f in folders)


def test_a_site_is_one_fixed_scene_as_wide_as_the_photo():
    first, second = site_backgrounds(2, 64, seed=0)
    assert first.size == (64, 64)
    again = site_backgrounds(2, 64, seed=0)[0]
    np.testing.assert_array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(second))


def test_a_non_empty_folder_is_refused(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["--out", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().out
