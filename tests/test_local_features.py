"""RootSIFT keypoints: descriptor maths, the keypoint cap, alpha masks, and loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from local_helpers import pil, texture
from PIL import Image

from retrieval.data.images import load_rgb
from retrieval.errors import InputError
from retrieval.local.features import (
    LocalSettings,
    extract_local_features,
    load_for_matching,
)


def test_rootsift_is_non_negative_with_unit_l2_norm() -> None:
    features = extract_local_features(pil(texture(1)))
    assert len(features) > 50
    assert features.keypoints.dtype == np.float32 and features.descriptors.dtype == np.float32
    assert features.descriptors.shape == (len(features), 128)
    assert (features.descriptors >= 0).all()
    # RootSIFT of an L1-normalised histogram h is sqrt(h): its squared L2 norm is sum(h) = 1
    np.testing.assert_allclose(np.linalg.norm(features.descriptors, axis=1), 1.0, atol=2e-3)


@pytest.mark.parametrize("cap", [1, 20, 100])
def test_keypoints_are_capped_and_inside_the_image(cap: int) -> None:
    features = extract_local_features(pil(texture(2)), max_keypoints=cap)
    assert len(features) == cap
    assert (features.keypoints >= -0.5).all() and (features.keypoints < 256).all()


def test_keypoints_come_back_in_original_pixels_when_downscaled() -> None:
    small = texture(3, 256)
    big = np.repeat(np.repeat(small, 4, axis=0), 4, axis=1)  # 1024 px, SIFT sees 256 px
    features = extract_local_features(pil(big), work_size=256)
    assert (features.width, features.height) == (1024, 1024)
    assert features.keypoints.max() > 600 and features.keypoints.max() < 1024


def test_a_flat_image_has_no_keypoints() -> None:
    features = extract_local_features(Image.new("RGB", (200, 120), (90, 120, 60)))
    assert features.keypoints.shape == (0, 2) and features.descriptors.shape == (0, 128)
    assert (features.width, features.height) == (200, 120)


def _cut_out(size: int = 256) -> Image.Image:
    """The texture everywhere, opaque only inside the box [64, 192) x [80, 176)."""
    alpha = np.zeros((size, size), np.uint8)
    alpha[80:176, 64:192] = 255
    return Image.fromarray(np.dstack([texture(4, size), alpha]), "RGBA")


def test_alpha_keeps_keypoints_on_the_opaque_region() -> None:
    image = _cut_out()
    unmasked = extract_local_features(image.convert("RGB"))
    outside = (unmasked.keypoints[:, 0] < 63) | (unmasked.keypoints[:, 1] < 79)
    assert outside.any()  # without the mask, the texture outside has keypoints too
    features = extract_local_features(image)
    x, y = features.keypoints[:, 0], features.keypoints[:, 1]
    assert len(features) > 10
    assert ((x >= 63.5) & (x <= 191.5) & (y >= 79.5) & (y <= 175.5)).all()


def test_load_for_matching_keeps_the_alpha_of_a_cut_out(tmp_path: Path) -> None:
    path = tmp_path / "cut.png"
    _cut_out().save(path)
    image = load_for_matching(path)
    assert image.mode == "RGBA"
    assert image.convert("RGB").tobytes() == load_rgb(path).tobytes()  # the same pixels
    alpha = np.asarray(image.getchannel("A"))
    assert alpha[100, 100] == 255 and alpha[10, 10] == 0


def test_load_for_matching_leaves_an_opaque_photo_rgb(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    pil(texture(5)).save(path)
    assert load_for_matching(path).mode == "RGB"


@pytest.mark.parametrize("content", [b"", b"not an image at all"])
def test_an_unreadable_file_is_a_one_line_input_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.jpg"
    path.write_bytes(content)
    with pytest.raises(InputError) as err:
        load_for_matching(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("bad", [{"max_keypoints": 0}, {"work_size": -5}, {"work_size": 1.5}])
def test_bad_settings_are_refused(bad: dict) -> None:
    with pytest.raises(InputError, match=next(iter(bad))):
        LocalSettings(**bad)
    with pytest.raises(InputError):
        extract_local_features(pil(texture(6, 64)), **bad)


def test_a_foreground_mask_keeps_keypoints_on_the_animal() -> None:
    image = pil(texture(7, 256))
    left = np.zeros((4, 4), bool)
    left[:, :2] = True  # the left half, at a coarse resolution as a feature map gives it
    features = extract_local_features(image, foreground=left, work_size=128)
    assert len(features) > 10 and (features.keypoints[:, 0] < 128).all()
    assert (extract_local_features(image).keypoints[:, 0] >= 128).any()


def test_alpha_wins_over_a_foreground_estimate() -> None:
    everywhere = np.ones((2, 2), bool)
    exact = extract_local_features(_cut_out())
    both = extract_local_features(_cut_out(), foreground=everywhere)
    np.testing.assert_array_equal(both.keypoints, exact.keypoints)


def test_an_unknown_foreground_is_refused() -> None:
    with pytest.raises(InputError, match="none, saliency"):
        LocalSettings(foreground="grabcut")
