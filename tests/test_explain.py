"""``search.py photo.jpg --explain OUT.png``: the query beside its best match, verified keypoint
matches drawn as lines; the drawing checked on a synthetic warp, the flag end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import train_tiny
from local_helpers import HOMOGRAPHY, pil, texture, warped
from PIL import Image

import search
from retrieval.errors import InputError
from retrieval.local.features import extract_local_features, load_for_matching
from retrieval.local.matching import match_local
from retrieval.query import QueryAnswer
from retrieval.report.explain import (
    GAP_PX,
    HEIGHT_PX,
    MAX_LINES,
    TITLE_PX,
    draw_match,
    explain_answer,
    matching_settings,
    spread_subset,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A workdir with a 2-epoch run on the tiny data set."""
    return train_tiny(tmp_path_factory.mktemp("explain"), epochs=2)


def test_spread_subset_keeps_far_apart_points_up_to_the_limit():
    rng = np.random.default_rng(0)
    points = rng.random((500, 2)).astype(np.float32) * 100
    keep = spread_subset(points, 20)
    assert len(keep) == len(set(keep.tolist())) == 20
    chosen = points[keep]
    gaps = np.linalg.norm(chosen[:, None] - chosen[None], axis=2) + np.eye(20) * 1e9
    assert gaps.min() > 8.0  # 20 random picks of 500 would come far closer
    assert np.array_equal(spread_subset(points[:5], 20), np.arange(5))


def test_draw_match_puts_both_photos_side_by_side_with_the_lines(tmp_path):
    query_pixels = texture(1, 256)
    gallery_pixels = warped(texture(1, 256), HOMOGRAPHY)[:, :200]  # another width
    query, gallery = tmp_path / "q.png", tmp_path / "g.png"
    pil(query_pixels).save(query)
    pil(gallery_pixels).save(gallery)
    match = match_local(
        *(extract_local_features(load_for_matching(p), max_keypoints=512) for p in (query, gallery))
    )
    assert match.inliers > MAX_LINES  # so the subset is exercised
    out = draw_match(query, gallery, match, title="query beside x", out=tmp_path / "m.png")
    assert out == tmp_path / "m.png" and not list(tmp_path.glob("*.tmp*"))
    drawn = np.asarray(Image.open(out).convert("RGB")).astype(np.float64)
    width_gallery = round(200 * HEIGHT_PX / 256)
    assert drawn.shape == (TITLE_PX + HEIGHT_PX, HEIGHT_PX + GAP_PX + width_gallery, 3)
    for pixels, x0, w in ((query_pixels, 0, HEIGHT_PX), (gallery_pixels, -width_gallery, None)):
        expected = np.asarray(pil(pixels).resize((width_gallery if w is None else w, HEIGHT_PX)))
        shown = drawn[TITLE_PX:, x0 : (x0 + w if w else None)]
        assert np.median(np.abs(shown - expected)) < 12  # the photo, under a few lines
    gap = drawn[TITLE_PX:, HEIGHT_PX : HEIGHT_PX + GAP_PX]
    coloured = np.ptp(gap, axis=2) > 60  # lines cross the white gap in colour
    assert coloured.any(axis=0).all()


def test_an_answer_without_a_match_is_refused(tmp_path):
    settings, geometry = matching_settings(None)
    with pytest.raises(InputError, match="no gallery match"):
        explain_answer(
            QueryAnswer(image="a.jpg"), tmp_path / "x.png", settings=settings, geometry=geometry
        )


def test_search_explain_writes_the_picture(trained, tmp_path, capsys):
    data, workdir = trained
    photo = next((data / "red").glob("*.jpg"))
    out = tmp_path / "explain.png"
    argv = [str(photo), "--workdir", str(workdir), "--local_match", "off"]
    assert search.main([*argv, "--explain", str(out)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"wrote {out}: query beside ") and "verified keypoint matches" in last
    with Image.open(out) as image:
        assert image.height == TITLE_PX + HEIGHT_PX and image.width > 2 * HEIGHT_PX


def test_two_photos_with_explain_are_one_clean_line(tmp_path, capsys):
    photos = [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")]  # refused before any reading
    argv = [*photos, "--workdir", str(tmp_path), "--explain", str(tmp_path / "x.png")]
    assert search.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--explain" in err[0] and "exactly one image" in err[0]
    assert not (tmp_path / "x.png").exists()
