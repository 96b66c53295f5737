"""What keeps a review session quick (issue 37): a workspace embeds a photo once, and a few
enrolments keep the local-match fusion instead of fitting it again on val."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from conftest import train_tiny

from retrieval.calibration.gallery_policy import CHECK_DROPPED
from retrieval.calibration.local_policy import REFIT_SHARE, fusion_still_fits
from retrieval.cli import default_checkpoint
from retrieval.serving.fusion import Curve, Fusion
from retrieval.workspace import open_workspace, prepare_for, refresh_policy


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    _, workdir = train_tiny(tmp_path_factory.mktemp("speed"))
    return open_workspace(workdir, default_checkpoint(workdir, None), progress=False)


def test_a_photo_is_embedded_once_per_workspace(ws):
    val = prepare_for(ws.loaded, ws.workdir, data=None, image_root=None).val
    first = ws.embed(val, progress=False)
    assert len(ws._vectors) >= len({r.path for r in val})
    first[:] = 0  # the caller's copy: the cache keeps its own
    again = ws.embed(val[::-1], progress=False)
    np.testing.assert_array_equal(again[::-1], ws.embed(val, progress=False))
    assert np.abs(again).sum() > 0
    changed = val[0].path
    changed.touch()  # a replaced file is embedded again
    before = len(ws._vectors)
    ws.embed([val[0]], progress=False)
    assert len(ws._vectors) == before + 1


def test_the_fusion_is_fitted_again_only_after_a_large_change(ws):
    curve = Curve((0.0, 1.0), (0.0, 1.0))
    size = ws.gallery.size
    fusion = Fusion(curve, curve, evidence={"gallery_items": size})
    assert fusion_still_fits(fusion, ws.gallery)
    grown = replace(fusion, evidence={"gallery_items": int(size / (1 + 2 * REFIT_SHARE))})
    assert not fusion_still_fits(grown, ws.gallery)
    assert not fusion_still_fits(replace(fusion, evidence={}), ws.gallery)  # fitted before


def test_a_refitted_fusion_says_its_new_individual_check_went_with_it(ws):
    curve = Curve((0.0, 1.0), (0.0, 1.0))
    checked = replace(ws.gallery.policy_for(expand=False), unknown_min_confidence=0.4)
    old = int(ws.gallery.size / (1 + 2 * REFIT_SHARE))  # fitted on a much smaller gallery
    ws.gallery.set_fusion(Fusion(curve, curve, policy=checked, evidence={"gallery_items": old}))
    note = refresh_policy(ws, why="enrolled photos")
    assert ws.gallery.fusion is None
    assert "calibrated again" in note and note.count(CHECK_DROPPED) == 1
