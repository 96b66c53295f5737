"""Enrolling new individuals and removing classes without retraining (search.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image, train_tiny

import evaluate
import search
from retrieval import checkpoint as ckpt
from retrieval.serving.gallery import Gallery

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    return train_tiny(tmp_path_factory.mktemp("enroll"))


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory) -> Path:
    """A folder holding one new individual, 'violet', in the training layout."""
    root = tmp_path_factory.mktemp("new") / "enroll"
    for j in range(3):
        make_image(root / "violet" / f"violet-g{j}_1.jpg", seed=900 + j, colour=(140, 0, 255))
    return root


def _answers(capsys, *argv: str) -> list[dict]:
    capsys.readouterr()
    assert search.main([*argv, "--format", "json"]) in (0, 1)
    return json.loads(capsys.readouterr().out)


def test_enroll_then_remove_a_new_individual(trained, newcomer, capsys):
    _, workdir = trained
    gallery_dir = workdir / "gallery"
    before = Gallery.load(gallery_dir)
    wd = ["--workdir", str(workdir)]

    assert search.main(["--enroll", str(newcomer), *wd]) == 0
    out = capsys.readouterr().out
    assert "new classes: violet" in out and "chosen again on val (enrolled 3 photo(s))" in out
    grown = Gallery.load(gallery_dir)
    assert grown.size == before.size + 3 and grown.class_names[-1] == "violet"
    # IDs of the existing items do not move
    np.testing.assert_array_equal(grown.labels_by_id[: before.size], before.labels_by_id)

    query = next((newcomer / "violet").glob("*.jpg"))
    top = _answers(capsys, str(query), *wd)[0]["matches"][0]
    assert top["class"] == "violet" and top["distance"] == pytest.approx(0.0, abs=1e-3)

    assert search.main(["--enroll", str(newcomer), *wd]) == 0  # twice: nothing new
    assert "enrolled 0 image(s)" in capsys.readouterr().out

    assert search.main(["--remove", "violet", *wd]) == 0
    pruned = Gallery.load(gallery_dir)
    assert pruned.size == before.size
    np.testing.assert_array_equal(pruned.index.ids(), before.index.ids())
    matches = _answers(capsys, str(query), *wd)[0]["matches"]
    assert all(m["class"] != "violet" for m in matches)
    events = [e["event"] for e in pruned.history]
    changes = [e for e in events if e not in ("decision_policy", "local_match")]
    assert changes[-3:] == ["enroll", "enroll", "remove"]
    assert events[-1] == "decision_policy"  # the policy follows the gallery it decides on


def test_enrolling_with_another_checkpoint_is_refused(trained, newcomer, tmp_path, capsys):
    _, workdir = trained
    state = ckpt.load_checkpoint(workdir / "checkpoints" / "best_model.pt")
    with torch.no_grad():
        state["model"]["neck.weight"] += 0.01
    state["model_hash"] = ckpt.weights_hash(state["model"])
    other = tmp_path / "other.pt"
    ckpt.save_atomic(state, other)
    argv = ["--enroll", str(newcomer), "--workdir", str(workdir), "--checkpoint", str(other)]
    assert search.main(argv) == 2
    assert "another checkpoint" in capsys.readouterr().err


def test_removing_an_unknown_class_names_the_known_ones(trained, capsys):
    _, workdir = trained
    assert search.main(["--remove", "unicorn", "--workdir", str(workdir)]) == 2
    assert "unicorn" in capsys.readouterr().err


def test_a_crash_during_enrollment_keeps_the_previous_gallery(trained, newcomer):
    """Kill the process in the middle of writing the new gallery version."""
    _, workdir = trained
    before = Gallery.load(workdir / "gallery")
    script = textwrap.dedent(
        f"""
        import os, sys
        import numpy as np
        sys.argv = ["search.py", "--enroll", {str(newcomer)!r}, "--workdir", {str(workdir)!r}]
        real_save = np.save
        def dying_save(path, array, *args, **kwargs):
            real_save(path, array[: len(array) // 2])  # half a file, then the power goes
            os._exit(9)
        np.save = dying_save
        import search
        search.main(sys.argv[1:])
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True)
    assert proc.returncode == 9, proc.stderr.decode()[-2000:]
    after = Gallery.load(workdir / "gallery")
    assert after.size == before.size
    np.testing.assert_array_equal(after.labels_by_id, before.labels_by_id)


def test_open_set_check_is_reported_stored_and_used_by_search(trained, capsys):
    data, workdir = trained
    wd = ["--workdir", str(workdir)]
    argv = ["--split", "test", "--open_set", "--open_set_fraction", "0.4", "--figures=false"]
    assert evaluate.main([*argv, *wd]) == 0
    out = capsys.readouterr().out
    assert "AUROC known vs unknown" in out and "AURC" in out
    metrics = json.loads((workdir / "results" / "open_set_metrics.json").read_text())
    assert metrics["calibration_split"] == "val" and metrics["unknown_classes"]
    assert 0.0 <= metrics["report"]["auroc_confidence"] <= 1.0
    assert set(metrics["decision"]) >= {"rule", "aurc", "ece", "coverage_at_target"}
    assert (workdir / "results" / "open_set_test_risk_coverage.csv").is_file()
    gallery = Gallery.load(workdir / "gallery")
    assert gallery.history[-1]["event"] == "open_set_calibrate"
    policy = gallery.policy
    assert policy.unknown_min_confidence > 0 and "open_set" in policy.evidence
    queries = [str(p) for p in sorted(data.glob("*/*.jpg"))[:8]]
    for answer in _answers(capsys, *queries, *wd):  # one unit: accepted iff confident enough
        assert (answer["status"] == "accepted") == (answer["confidence"] >= policy.threshold)


def test_enrolling_a_known_animal_under_a_new_name_is_flagged(trained, tmp_path, capsys):
    """The enrol check decides each photo as a search would before adding it."""
    _, workdir = trained
    copy = tmp_path / "workdir"
    shutil.copytree(workdir, copy)
    gallery = Gallery.load(copy / "gallery")
    photo = Path(next(p for p in gallery.paths_by_id if "/red/" in p))
    renamed = tmp_path / "enroll" / "crimson" / "crimson-g0_1.jpg"
    renamed.parent.mkdir(parents=True)
    shutil.copy(photo, renamed)
    policy = gallery.policy_for(expand=False)
    assert search.main(["--enroll", str(tmp_path / "enroll"), "--workdir", str(copy)]) == 0
    out = capsys.readouterr().out
    answer = _answers(capsys, str(photo), "--workdir", str(workdir))[0]
    flagged = "is enrolled as crimson but the gallery names it red" in out
    assert flagged == (answer["status"] == "accepted" and answer["class"] == "red")
    assert flagged or answer["confidence"] < policy.threshold
