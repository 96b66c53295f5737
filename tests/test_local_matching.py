"""Mutual ratio-test matching against OpenCV's brute force, and geometric verification on
synthetic photos whose true correspondence is a known warp."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from local_helpers import AFFINE, HOMOGRAPHY, apply, pil, texture, warped
from PIL import Image

from retrieval.errors import InputError
from retrieval.local.features import extract_local_features
from retrieval.local.matching import GEOMETRIES, match_local, match_local_ways, mutual_ratio_matches


def _reference_matches(q: np.ndarray, g: np.ndarray, ratio: float) -> set[tuple[int, int]]:
    """The textbook recipe: knnMatch(k=2) both ways, ratio test, keep mutual pairs."""
    matcher = cv2.BFMatcher(cv2.NORM_L2)

    def passing(a: np.ndarray, b: np.ndarray) -> dict[int, int]:
        out = {}
        for m in matcher.knnMatch(a, b, k=2):
            if len(m) == 1 or m[0].distance < ratio * m[1].distance:
                out[m[0].queryIdx] = m[0].trainIdx
        return out

    forward, backward = passing(q, g), passing(g, q)
    return {(i, j) for i, j in forward.items() if backward.get(j) == i}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mutual_ratio_matches_equal_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    q = rng.random((60, 128), dtype=np.float32)
    g = np.vstack([q[:30] + rng.normal(0, 0.05, (30, 128)), rng.random((45, 128))])
    g = g.astype(np.float32)
    qi, gi = mutual_ratio_matches(q, g, ratio=0.8)
    found = set(zip(qi.tolist(), gi.tolist(), strict=True))
    assert found == _reference_matches(q, g, 0.8)
    assert len(found) >= 20  # the test means something: the perturbed copies match


def test_an_exact_tie_is_no_match() -> None:
    q = np.eye(4, 128, dtype=np.float32)
    g = np.vstack([q[:1], q[:1], q[1:]])  # query 0 has two equally near gallery rows
    qi, gi = mutual_ratio_matches(q, g, ratio=1.0)
    assert 0 not in qi.tolist() and sorted(gi.tolist()) == [2, 3, 4]


@pytest.mark.parametrize(
    ("matrix", "geometry"),
    [(HOMOGRAPHY, "homography"), (HOMOGRAPHY, "fundamental"), (AFFINE, "affine")],
)
def test_a_warped_copy_matches_along_the_true_warp(matrix: np.ndarray, geometry: str) -> None:
    image = texture(10)
    query = extract_local_features(pil(image))
    gallery = extract_local_features(pil(warped(image, matrix)))
    match = match_local(query, gallery, geometry=geometry)
    assert match.inliers >= 20 and match.tentative >= match.inliers
    assert match.points_query.shape == match.points_gallery.shape == (match.inliers, 2)
    error = np.linalg.norm(apply(matrix, match.points_query) - match.points_gallery, axis=1)
    assert np.median(error) < 1.0 and np.quantile(error, 0.95) < 3.0


def test_unrelated_photos_have_few_inliers() -> None:
    image = texture(11)
    query = extract_local_features(pil(image))
    same = match_local(query, extract_local_features(pil(warped(image, HOMOGRAPHY))))
    for seed in (12, 13):
        other = match_local(query, extract_local_features(pil(texture(seed))))
        assert other.inliers <= 8 and other.inliers * 10 < same.inliers


def test_keypoints_of_a_downscaled_photo_match_in_original_pixels() -> None:
    small = texture(14, 256)
    big = cv2.resize(small, (768, 768), interpolation=cv2.INTER_CUBIC)
    match = match_local(
        extract_local_features(pil(small)), extract_local_features(pil(big), work_size=256)
    )
    assert match.inliers >= 20
    # pixel centres: x_big + 0.5 = 3 (x_small + 0.5)
    error = np.linalg.norm(3 * match.points_query + 1.0 - match.points_gallery, axis=1)
    assert np.median(error) < 2.0


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_a_flat_photo_matches_nothing(geometry: str) -> None:
    flat = extract_local_features(Image.new("RGB", (128, 128), (100, 100, 100)))
    textured = extract_local_features(pil(texture(15)))
    for a, b in [(flat, textured), (textured, flat), (flat, flat)]:
        match = match_local(a, b, geometry=geometry)
        assert match.inliers == 0 and match.points_query.shape == (0, 2)


def test_matching_is_deterministic() -> None:
    image = texture(16)
    query = extract_local_features(pil(image))
    gallery = extract_local_features(pil(warped(image, HOMOGRAPHY)))
    first = match_local(query, gallery)
    cv2.setRNGSeed(12345)  # whatever the generator was left at
    second = match_local(query, gallery)
    assert first.inliers == second.inliers
    np.testing.assert_array_equal(first.points_query, second.points_query)


def test_an_unknown_geometry_is_refused_with_the_allowed_ones() -> None:
    features = extract_local_features(pil(texture(17, 64)))
    with pytest.raises(InputError, match=r"homography, fundamental, affine.*'similarity'"):
        match_local(features, features, geometry="similarity")


@pytest.mark.parametrize("ratio", [0.0, 1.5])
def test_a_ratio_outside_0_1_is_refused(ratio: float) -> None:
    features = extract_local_features(pil(texture(18, 64)))
    with pytest.raises(InputError, match="ratio"):
        match_local(features, features, ratio=ratio)


def test_every_geometry_from_one_matching_equals_matching_for_each() -> None:
    image = texture(17)
    query = extract_local_features(pil(image))
    gallery = extract_local_features(pil(warped(image, HOMOGRAPHY)))
    ways = match_local_ways(query, gallery, geometries=GEOMETRIES)
    for geometry, match in zip(GEOMETRIES, ways, strict=True):
        alone = match_local(query, gallery, geometry=geometry)
        assert match.inliers == alone.inliers > 0 and match.tentative == alone.tentative
        np.testing.assert_array_equal(match.points_gallery, alone.points_gallery)
