"""A gallery whose local matching keeps keypoints on the backbone's foreground estimate, end to
end on a tiny trained run: chosen on val, then evaluate, search and --explain read it alike."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
from conftest import train_tiny

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import local_bench

import evaluate
import search
from retrieval.calibration.local_policy import choose_gallery_fusion
from retrieval.cli import default_checkpoint
from retrieval.local.store import store_name
from retrieval.workspace import open_workspace, prepare_for


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    return train_tiny(tmp_path_factory.mktemp("saliency"))


def test_the_bench_scores_the_saliency_foreground_on_val_and_test(trained, tmp_path):
    _, workdir = trained
    out = tmp_path / "bench.json"
    argv = ["--workdir", str(workdir), "--foreground", "saliency", "--shortlists", "5"]
    assert local_bench.main([*argv, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["foregrounds_compared"] == ["saliency"]
    assert result["fusion"]["foreground"] == "saliency"
    settings = result["fusion"]["evidence"]["settings"]
    assert set(settings) == {f"saliency, {g}" for g in ("homography", "fundamental", "affine")}
    assert set(result["fused"]) >= {"recall_at_1", "map_at_50", "decision_accuracy"}


def test_search_and_evaluate_answer_alike_with_a_saliency_fusion(trained, tmp_path, capsys):
    _, workdir = trained
    ws = open_workspace(workdir, default_checkpoint(workdir, None))
    val = prepare_for(ws.loaded, workdir, data=None, image_root=None).val
    fusion = choose_gallery_fusion(ws, val, foregrounds=("saliency",), progress=False)
    assert fusion is not None and fusion.foreground == "saliency"
    ws.gallery.set_fusion(fusion)
    assert ws.gallery.save_if_free(ws.gallery_root, ws.workdir)
    assert (ws.gallery_root / store_name(fusion.settings)).is_file()
    capsys.readouterr()

    wd = ["--workdir", str(workdir), "--local_match", "on"]
    assert evaluate.main(["--split", "test", *wd, "--figures=false"]) == 0
    assert "saliency foreground" in capsys.readouterr().out
    with (workdir / "results" / "test_decisions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    images = [row["image"] for row in rows]
    assert search.main([*images, *wd, "--format", "json"]) == 0
    answers = {a["image"]: a for a in json.loads(capsys.readouterr().out)}
    for row in rows:
        got = answers[row["image"]]
        assert got["confidence"] == pytest.approx(float(row["confidence"]), abs=1e-5)
        assert (got["class"] or "unclassifiable") == row["answer"]
        assert all(m["inliers"] is not None for m in got["matches"])

    picture = tmp_path / "why.png"
    assert search.main([images[0], *wd, "--explain", str(picture)]) == 0
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
