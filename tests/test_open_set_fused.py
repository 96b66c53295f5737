"""The new-individual check where local matching decides (issue 36): the open-set simulation
re-scores each shortlist exactly as a fused photo search does, and the check it chooses is
stored in the fusion's policy, so a fused search declines a new individual too."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_TRAIN_ARGS
from local_helpers import pil, texture, warped

import evaluate
import search
import train
from retrieval.calibration.open_set import LocalMix, open_set_answers, simulate_open_set
from retrieval.serving.decide import DecisionPolicy
from retrieval.serving.evidence import decide_in_gallery
from retrieval.serving.fusion import Curve, Fusion
from retrieval.serving.gallery import Gallery
from retrieval.serving.local_scores import LocalQueries


def _photo(coat: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Another photo of the same coat: turned, scaled and shifted a little."""
    angle, scale = rng.uniform(-0.2, 0.2), rng.uniform(0.9, 1.1)
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    shift = rng.uniform(-12, 12, 2) + 128 * (1 - np.array([c - s, s + c]))
    return warped(coat, np.array([[c, -s, shift[0]], [s, c, shift[1]]]))


def _coats(root: Path, classes: dict[str, int], photos: int, seed: int) -> list[Path]:
    """``root/{name}/{name}-g{j}_1.png``: ``photos`` photos of each coat (texture seed)."""
    rng = np.random.default_rng(seed)
    paths = []
    for name, coat_seed in classes.items():
        coat = texture(coat_seed)
        for j in range(photos):
            path = root / name / f"{name}-g{j}_1.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            pil(_photo(coat, rng)).save(path)
            paths.append(path)
    return paths


# ------------------------------------------------------------------ one re-scoring for both
def test_simulated_mix_is_decided_as_a_fused_gallery_search(tmp_path: Path) -> None:
    """The open-set answers on local matches equal ``decide_in_gallery`` on a gallery that
    holds only the kept individuals: same winners, fused scores and confidences."""
    n_classes, per_gallery = 4, 3
    gallery_paths = _coats(tmp_path / "g", {f"c{c}": c for c in range(n_classes)}, per_gallery, 0)
    query_paths = _coats(tmp_path / "q", {f"c{c}": c for c in range(n_classes)}, 2, 1)
    g_labels = np.repeat(np.arange(n_classes), per_gallery)
    q_labels = np.repeat(np.arange(n_classes), 2)
    rng = np.random.default_rng(0)

    def unit(n: int) -> np.ndarray:  # global vectors that barely tell the coats apart
        x = rng.normal(size=(n, 8)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    g_emb, q_emb = unit(len(g_labels)), unit(len(q_labels))
    curves = {"global_curve": Curve((-1.0, 1.0), (0.0, 0.5)), "local_curve": Curve((0, 40), (0, 1))}
    policy = DecisionPolicy()  # the nearest photo, on the fused scale here
    fusion = Fusion(**curves, shortlist=12, max_keypoints=256, policy=policy)
    data = simulate_open_set(g_labels, g_emb, q_labels, q_emb, np.array([3]))
    root = tmp_path / "gallery"
    queries = LocalQueries([str(p) for p in query_paths], root, progress=False)
    local = LocalMix(fusion, queries, [str(p) for p in gallery_paths])
    answers = open_set_answers(data, fusion.policy, n_classes, local=local)

    kept = data.gallery_kept
    gallery = Gallery.build(
        g_emb[kept],
        g_labels[kept],
        [str(p) for p, k in zip(gallery_paths, kept, strict=True) if k],
        class_names=[f"c{c}" for c in range(n_classes)],
        fingerprint="test",
    )
    gallery.fusion = fusion
    searched = decide_in_gallery(gallery, q_emb, local=queries)
    assert searched.policy is fusion.policy and searched.inliers is not None
    for got, want in zip(answers.decisions, searched.decisions, strict=True):
        assert (got.predicted, got.accepted, got.agree) == (
            want.predicted,
            want.accepted,
            want.agree,
        )
        for name in ("confidence", "share", "top_score"):  # top_score: on the fused scale
            assert getattr(got, name) == pytest.approx(getattr(want, name), abs=1e-6)
    # the coats decide (the global vectors are noise): each known query finds its own
    assert answers.correct[~answers.is_unknown].all()


# ------------------------------------------------------------------ the CLIs, end to end
COATS = {f"ind{c}": 10 + c for c in range(6)}
NEWCOMER = {"stranger": 99}


@pytest.fixture(scope="module")
def coats(tmp_path_factory) -> tuple[Path, Path, list[Path]]:
    """A tiny workdir trained on 6 spotted coats (7 photos each), and photos of a seventh
    coat it never saw: (data, workdir, new photos)."""
    root = tmp_path_factory.mktemp("coats")
    data = root / "data"
    _coats(data, COATS, 7, seed=0)
    workdir = root / "work"
    argv = ["--data", str(data), "--workdir", str(workdir), "--epochs", "2"]
    assert train.main([*argv, "--warmup_epochs", "1", "--fresh", *TINY_TRAIN_ARGS]) == 0
    return data, workdir, _coats(root / "new", NEWCOMER, 3, seed=1)


def _search(capsys, *argv: str) -> list[dict]:
    capsys.readouterr()
    assert search.main([*argv, "--format", "json"]) in (0, 1)
    return json.loads(capsys.readouterr().out)


def test_open_set_with_local_matching_stores_the_check_in_the_fusion(coats, capsys) -> None:
    data, workdir, strangers = coats
    wd = ["--workdir", str(workdir)]
    argv = ["--split", "test", "--open_set", "--open_set_fraction", "0.4", "--figures=false"]
    assert evaluate.main([*argv, "--local_match", "on", "--target_far", "0", *wd]) == 0
    assert "open set: on the fused evidence" in capsys.readouterr().out
    metrics = json.loads((workdir / "results" / "open_set_metrics.json").read_text())
    assert (metrics["evidence"], metrics["local_match"]) == ("fused", "on")
    gallery = Gallery.load(workdir / "gallery")
    fused, plain = gallery.fusion.policy, gallery.policy
    assert fused.unknown_min_confidence > 0 and "open_set" in fused.evidence
    assert plain.unknown_min_confidence > 0  # --local_match off keeps its own check
    event = gallery.history[-1]
    assert event["event"] == "open_set_calibrate"
    assert event["unknown_min_confidence_fused"] == fused.unknown_min_confidence

    known = [str(p) for p in sorted(data.glob("*/*.png"))[::7]]
    photos = [*known, *map(str, strangers)]
    answers = _search(capsys, *photos, *wd, "--local_match", "on")
    for answer in answers:  # one unit, the fused check included
        assert answer["matches"][0]["inliers"] is not None  # local matching ran
        assert (answer["status"] == "accepted") == (answer["confidence"] >= fused.threshold)
    for photo, answer in zip(known, answers, strict=False):  # known coats keep their name
        assert answer["class"] == Path(photo).parent.name
    for answer in answers[len(known) :]:  # the stranger gets none
        assert answer["status"] == "unclassifiable" and answer["class"] is None


def test_open_set_without_local_matching_reports_the_global_path(coats, capsys) -> None:
    _, workdir, _ = coats
    argv = ["--split", "val", "--open_set", "--open_set_fraction", "0.4", "--figures=false"]
    assert evaluate.main([*argv, "--local_match", "off", "--workdir", str(workdir)]) == 0
    out = capsys.readouterr().out
    assert "open set: on the global evidence" in out
    metrics = json.loads((workdir / "results" / "open_set_metrics.json").read_text())
    assert (metrics["evidence"], metrics["local_match"]) == ("global", "off")
    event = Gallery.load(workdir / "gallery").history[-1]
    assert event["unknown_min_confidence_fused"] is None
