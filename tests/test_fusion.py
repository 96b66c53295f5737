"""Local matches fused with the global score (issue 36 items 2-3): the calibration curves, the
two ways of combining, the re-scored shortlist, the choice on val, the stored form, and the
keypoint cache that enrolment and removal keep honest."""

from __future__ import annotations

import numpy as np
import pytest
from local_helpers import HOMOGRAPHY, pil, texture, warped

from retrieval.calibration.fusion_fit import (
    choose_fusion,
    choose_fusion_setting,
    describe_fusion,
    fit_curve,
)
from retrieval.calibration.local_policy import local_queries
from retrieval.errors import InputError
from retrieval.local.features import LocalSettings
from retrieval.local.store import STORE_NAME, load_local_features
from retrieval.serving.fusion import Curve, Fusion, combine, fused_evidence, fused_order, logit
from retrieval.serving.local_scores import LocalScorer, forget_photos, store_key
from retrieval.serving.rules import QueryEvidence


def test_isotonic_curve_is_monotone_and_a_probability():
    rng = np.random.default_rng(0)
    scores = rng.random(400)
    same = rng.random(400) < scores  # more likely the same individual at a higher score
    curve = fit_curve(scores, same)
    grid = curve(np.linspace(-1, 2, 301))
    assert np.all(np.diff(grid) >= 0) and grid.min() >= 0 and grid.max() <= 1
    assert curve(np.array([-5.0]))[0] == grid[0]  # clipped outside the fitted range


def test_combinations_by_hand():
    pg, pl = np.array([0.2, 0.9]), np.array([0.6, 0.5])
    np.testing.assert_allclose(combine("mean", pg, pl), [0.4, 0.7])
    z = 0.5 + 1.0 * np.log(0.2 / 0.8) + 2.0 * np.log(0.6 / 0.4)
    got = combine("logistic", pg[:1], pl[:1], (0.5, 1.0, 2.0))
    np.testing.assert_allclose(got, [1 / (1 + np.exp(-z))])
    np.testing.assert_allclose(logit(np.array([0.5])), [0.0])
    with pytest.raises(InputError, match="mean, logistic"):
        combine("max", pg, pl)


def _fusion(**kw) -> Fusion:
    """Global: P = cosine; local: P rises from 0 at 0 inliers to 1 at 20."""
    curves = {"global_curve": Curve((0.0, 1.0), (0.0, 1.0)), "local_curve": Curve((0, 20), (0, 1))}
    return Fusion(**curves, **kw)


def test_shortlist_rescored_and_reordered_by_hand():
    # hit 0 (class 0) is nearer by cosine; hit 1 (class 1) has the verified pattern match
    cosines = np.array([[0.80, 0.70, 0.30]], np.float32)
    labels = np.array([[0, 1, 2]])
    inliers = np.array([[0, 20]])  # B = 2: the third hit keeps its global score
    scores, order = fused_order(_fusion(shortlist=2), cosines, inliers, labels)
    np.testing.assert_allclose(scores, [[0.85, 0.40, 0.30]], atol=1e-6)  # (0.7+1)/2, (0.8+0)/2
    np.testing.assert_array_equal(order, [[1, 0, 2]])
    evidence = QueryEvidence(cosines, labels, np.array([1, 1, 1]))
    fused = fused_evidence(evidence, scores, order)
    np.testing.assert_array_equal(fused.hit_labels, [[1, 0, 2]])


def test_no_hit_stays_last():
    cosines = np.array([[0.5, -1.0]], np.float32)
    scores, order = fused_order(_fusion(shortlist=1), cosines, np.array([[0]]), np.array([[3, -1]]))
    assert order[0, -1] == 1 and scores[0, -1] == -np.inf


def _val_set(rng: np.random.Generator, n: int = 60, signal: bool = True):
    """Val queries of 6 classes: the global nearest hit is right for 60 % of them; the true
    class's hit is always among the first 3 and, with ``signal``, has many inliers."""
    k, classes = 10, 6
    truth = rng.integers(0, classes, n)
    labels = np.stack([rng.permutation(classes * 2)[:k] % classes for _ in range(n)])
    scores = np.sort(rng.uniform(0.3, 0.9, (n, k)).astype(np.float32), axis=1)[:, ::-1].copy()
    for i in range(n):
        true_at = 0 if rng.random() < 0.6 else int(rng.integers(1, 3))
        others = [c for c in range(classes) if c != truth[i]]
        labels[i] = rng.choice(others, k)
        labels[i, true_at] = truth[i]
    same = labels == truth[:, None]
    inliers = np.where(same, rng.integers(25, 60, same.shape), rng.integers(0, 8, same.shape))
    if not signal:
        inliers = np.zeros_like(inliers)
    evidence = QueryEvidence(scores, labels.astype(np.int64), np.full(classes, 3), None)
    return evidence, inliers.astype(np.int32), truth


def test_val_switches_local_matching_on_where_the_pattern_decides():
    evidence, inliers, truth = _val_set(np.random.default_rng(1))
    fusion = choose_fusion(evidence, inliers, truth)
    e = fusion.evidence
    assert fusion.helps and e["accuracy_fused"] > e["accuracy_global"]
    assert fusion.shortlist == 10 and fusion.policy is not None
    assert "local matching: on" in describe_fusion(fusion, "auto")


def test_auto_keeps_it_off_where_local_scores_carry_no_signal():
    evidence, inliers, truth = _val_set(np.random.default_rng(2), signal=False)
    fusion = choose_fusion(evidence, inliers, truth)
    assert not fusion.helps
    assert "off, val scores it no better" in describe_fusion(fusion, "auto")
    assert "forced by --local_match on" in describe_fusion(fusion, "on")


def test_stored_fusion_round_trips_and_damage_names_the_fix():
    evidence, inliers, truth = _val_set(np.random.default_rng(3))
    fusion = choose_fusion(evidence, inliers, truth)
    again = Fusion.from_dict(fusion.to_dict())
    assert again.to_dict() == fusion.to_dict()
    cosines = np.array([[0.7, 0.6]], np.float32)
    np.testing.assert_allclose(
        again.fuse(cosines, np.array([[3, 40]])), fusion.fuse(cosines, np.array([[3, 40]]))
    )
    broken = fusion.to_dict()
    del broken["local_curve"]
    with pytest.raises(InputError, match="--rebuild_gallery"):
        Fusion.from_dict(broken)


def test_local_match_flag_is_checked():
    with pytest.raises(InputError, match="auto, on, off"):
        local_queries(None, [], local_match="always", val=None)  # type: ignore[arg-type]


def test_keypoint_cache_fills_on_demand_and_forgets_changed_photos(tmp_path):
    photos = []
    for i, image in enumerate([texture(5), warped(texture(5), HOMOGRAPHY), texture(6)]):
        path = tmp_path / f"p{i}.png"
        pil(image).save(path)
        photos.append(str(path))
    scorer = LocalScorer(tmp_path / "gallery", LocalSettings(max_keypoints=256), progress=False)
    queries = scorer.query_features(photos[:1])
    inliers = scorer.inliers(queries, [[photos[1], photos[2]]], shortlist=2)
    assert inliers.shape == (1, 2) and inliers[0, 0] > 4 * max(inliers[0, 1], 1)
    store = tmp_path / "gallery" / STORE_NAME
    key = store_key(scorer.settings)
    assert load_local_features(store, fingerprint=key).image_paths == sorted(photos[1:])
    forget_photos(tmp_path / "gallery", [photos[2]])  # enrolled again or removed
    assert load_local_features(store, fingerprint=key).image_paths == [photos[1]]
    # the same shortlist again: the forgotten photo is extracted afresh, the answer unchanged
    np.testing.assert_array_equal(scorer.inliers(queries, [[photos[1], photos[2]]], 2), inliers)


def test_val_chooses_the_geometry_whose_inliers_decide_best():
    evidence, inliers, truth = _val_set(np.random.default_rng(1))
    noise = np.random.default_rng(3).integers(0, 8, inliers.shape).astype(np.int32)
    ways = {("none", "homography"): noise, ("none", "affine"): inliers}
    fusion = choose_fusion_setting(evidence, ways, truth)
    by_setting = fusion.evidence["settings"]
    assert fusion.geometry == "affine" and fusion.foreground == "none" and fusion.helps
    assert by_setting["none, affine"] > by_setting["none, homography"]
    assert "affine inliers" in describe_fusion(fusion, "auto")


def test_val_keeps_the_foreground_estimate_only_where_it_decides_better():
    evidence, inliers, truth = _val_set(np.random.default_rng(1))
    noise = np.random.default_rng(3).integers(0, 8, inliers.shape).astype(np.int32)
    kept = choose_fusion_setting(
        evidence, {("none", "homography"): noise, ("saliency", "homography"): inliers}, truth
    )
    assert kept.foreground == "saliency" and kept.settings.foreground == "saliency"
    assert "saliency foreground" in describe_fusion(kept, "auto")
    assert Fusion.from_dict(kept.to_dict()).foreground == "saliency"
    # the same counts both ways: a tie, and the first listed (keypoints everywhere) wins
    tied = choose_fusion_setting(
        evidence, {("none", "homography"): inliers, ("saliency", "homography"): inliers}, truth
    )
    assert tied.foreground == "none"
