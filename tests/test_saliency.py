"""The backbone's foreground estimate: masks from a real (tiny, random) timm model, and the
keypoint stores it keeps apart from the plain ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from local_helpers import pil, texture

from retrieval.device import plan_runtime, probe_device
from retrieval.errors import InputError
from retrieval.local.features import LocalSettings
from retrieval.local.store import STORE_NAME, load_local_features
from retrieval.model.embedder import build_embedding_model
from retrieval.model.saliency import BackboneSaliency, foreground_of
from retrieval.serving.local_scores import LocalScorer, extract_photos, forget_photos, store_key


def test_the_mask_is_the_part_of_the_map_at_or_above_its_mean():
    heat = np.zeros((4, 6), np.float32)
    heat[1:3, 3:5] = 10.0  # the animal
    mask = foreground_of(heat)
    assert mask.shape == (16, 24) and mask.dtype == bool
    assert mask[6, 15] and not mask[0, 0] and not mask[15, 2]
    assert mask.mean() < 0.5


def test_a_flat_map_keeps_the_whole_photo():
    assert foreground_of(np.full((3, 3), 2.5, np.float32)).all()


@pytest.fixture(scope="module")
def saliency() -> BackboneSaliency:
    model = build_embedding_model("test_efficientnet", pretrained="none").eval()
    plan = plan_runtime(probe_device(device="cpu"))
    return BackboneSaliency(model, plan, image_size=64, key="tiny:model")


def _photos(tmp_path: Path, n: int = 3) -> list[str]:
    paths = []
    for i in range(n):
        path = tmp_path / f"p{i}.png"
        pil(texture(20 + i, 96 + 32 * i)).save(path)
        paths.append(str(path))
    return paths


def test_masks_come_from_the_real_backbone_one_per_photo(saliency, tmp_path):
    paths = _photos(tmp_path)
    masks = saliency.masks(paths, progress=False)
    assert len(masks) == 3 and all(m.dtype == bool and m.ndim == 2 and m.any() for m in masks)
    np.testing.assert_array_equal(saliency.masks(paths[:1], progress=False)[0], masks[0])


def test_saliency_keypoints_have_their_own_store_keyed_by_the_model(saliency, tmp_path):
    paths = _photos(tmp_path)
    root = tmp_path / "gallery"
    plain = LocalScorer(root, LocalSettings(max_keypoints=128), progress=False)
    on_fg = LocalScorer(
        root,
        LocalSettings(max_keypoints=128, foreground="saliency"),
        progress=False,
        foreground=saliency,
    )
    everywhere = plain.gallery_features(paths)
    kept = on_fg.gallery_features(paths)
    assert on_fg.store != plain.store and plain.store.name == STORE_NAME
    assert sum(map(len, kept)) <= sum(map(len, everywhere))
    stored = load_local_features(on_fg.store, fingerprint=store_key(on_fg.settings, saliency))
    assert stored.settings.foreground == "saliency" and stored.image_paths == sorted(paths)
    # another model draws other masks: its scorer starts the cache again
    with pytest.raises(InputError, match="another gallery"):
        load_local_features(on_fg.store, fingerprint=store_key(on_fg.settings, None))
    forget_photos(root, paths[:1])  # enrolled again or removed: dropped from every store
    for scorer in (plain, on_fg):
        key = store_key(scorer.settings, scorer.foreground)
        assert load_local_features(scorer.store, fingerprint=key).image_paths == sorted(paths[1:])


def test_saliency_settings_without_a_model_name_the_fix(tmp_path):
    paths = _photos(tmp_path, 1)
    with pytest.raises(InputError, match="--local_match off"):
        extract_photos(paths, LocalSettings(foreground="saliency"), None, progress=False)
