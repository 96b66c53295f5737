"""The process pool gives exactly what in-process extraction and matching give, in order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from local_helpers import HOMOGRAPHY, pil, texture, warped

from retrieval.data.images import UnreadableImage
from retrieval.local import pool
from retrieval.local.features import LocalSettings

SETTINGS = LocalSettings(max_keypoints=128, work_size=128)


@pytest.fixture
def photos(tmp_path: Path) -> list[Path]:
    paths = []
    for seed in range(4):
        image = texture(seed, 128)
        for name, array in [("a", image), ("b", warped(image, HOMOGRAPHY))]:
            paths.append(tmp_path / f"{seed}_{name}.png")
            pil(array).save(paths[-1])
    return paths


def test_pool_size_leaves_small_jobs_in_process() -> None:
    assert pool.pool_size(3, workers=8, min_per_worker=4) == 1
    assert pool.pool_size(100, workers=2, min_per_worker=4) == 2
    assert pool.pool_size(9, workers=8, min_per_worker=4) == 2


def test_the_pool_equals_in_process(photos: list[Path], monkeypatch, capsys) -> None:
    monkeypatch.setattr(pool, "MIN_IMAGES_PER_WORKER", 1)
    monkeypatch.setattr(pool, "MIN_PAIRS_PER_WORKER", 1)
    monkeypatch.setattr(pool, "_PROGRESS_FROM", {"keypoints": 1, "local matches": 1})
    alone = pool.extract_many(photos, settings=SETTINGS, workers=1, progress=False)
    pooled = pool.extract_many(photos, settings=SETTINGS, workers=2, progress=True)
    assert "keypoints: 8/8 (100%)" in capsys.readouterr().err  # plain lines off a terminal
    for a, b in zip(alone, pooled, strict=True):
        np.testing.assert_array_equal(a.keypoints, b.keypoints)
        np.testing.assert_array_equal(a.descriptors, b.descriptors)
    pairs = np.array([(q, g) for q in range(0, 8, 2) for g in range(1, 8, 2)])
    first = pool.match_many(alone, alone, pairs, workers=1, progress=False)
    second = pool.match_many(alone, pooled, pairs, workers=2, progress=False)
    assert [m.inliers for m in first] == [m.inliers for m in second]
    same = pairs[:, 1] == pairs[:, 0] + 1  # a photo and its own warped copy
    inliers = np.array([m.inliers for m in first])
    assert inliers[same].min() > inliers[~same].max()


@pytest.mark.parametrize("workers", [1, 2])
def test_an_unreadable_photo_names_its_path(photos: list[Path], workers, monkeypatch) -> None:
    monkeypatch.setattr(pool, "MIN_IMAGES_PER_WORKER", 1)
    photos[3].write_bytes(b"broken")
    with pytest.raises(UnreadableImage, match=str(photos[3].name)):
        pool.extract_many(photos, settings=SETTINGS, workers=workers, progress=False)
