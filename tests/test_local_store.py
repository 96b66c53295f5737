"""The keypoint store: round trip, refusal of a foreign or damaged file, enrol and remove."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from local_helpers import pil, texture
from PIL import Image

from retrieval.errors import InputError
from retrieval.local.features import LocalFeatures, LocalSettings, extract_local_features
from retrieval.local.store import (
    STORE_NAME,
    add_local_features,
    load_local_features,
    remove_local_features,
    save_local_features,
    store_name,
)

SETTINGS = LocalSettings(max_keypoints=64, work_size=128)
FINGERPRINT = "model-abc:tta=none"


def _features(seed: int) -> LocalFeatures:
    return extract_local_features(
        pil(texture(seed, 96)), max_keypoints=SETTINGS.max_keypoints, work_size=128
    )


def _same(a: LocalFeatures, b: LocalFeatures) -> None:
    np.testing.assert_array_equal(a.keypoints, b.keypoints)
    np.testing.assert_array_equal(a.descriptors, b.descriptors)  # float16-exact by design
    assert (a.width, a.height) == (b.width, b.height)


@pytest.fixture
def stored(tmp_path: Path) -> tuple[Path, list[LocalFeatures], list[str]]:
    flat = extract_local_features(Image.new("RGB", (50, 40), (9, 9, 9)))
    features = [_features(1), flat, _features(2)]
    paths = ["data/a/a_1.jpg", "data/a/a_2.jpg", "data/b/b_1.jpg"]
    path = tmp_path / "gallery" / STORE_NAME
    save_local_features(
        path, features, fingerprint=FINGERPRINT, image_paths=paths, settings=SETTINGS
    )
    return path, features, paths


def test_round_trip_keeps_every_photo_exactly(stored) -> None:
    path, features, paths = stored
    store = load_local_features(path, fingerprint=FINGERPRINT)
    assert store.image_paths == paths and store.settings == SETTINGS
    assert len(store.features[1]) == 0  # a photo without keypoints keeps its place
    for a, b in zip(store.features, features, strict=True):
        _same(a, b)
    _same(store.for_paths([paths[2]])[0], features[2])
    assert [p.name for p in path.parent.iterdir()] == [STORE_NAME]  # no temp file left


def test_another_fingerprint_is_refused_with_the_fix(stored) -> None:
    path, _, _ = stored
    with pytest.raises(InputError, match=r"another gallery.*--rebuild_gallery") as err:
        load_local_features(path, fingerprint="model-xyz:tta=none")
    assert str(path) in str(err.value)


def test_another_format_version_is_refused(stored) -> None:
    path, _, _ = stored
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["format_version"] = np.array(99)
    with path.open("wb") as handle:
        np.savez(handle, **arrays)
    with pytest.raises(InputError, match=r"format 99.*--rebuild_gallery"):
        load_local_features(path, fingerprint=FINGERPRINT)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "inconsistent", "missing"])
def test_a_damaged_or_missing_store_is_refused(stored, damage: str) -> None:
    path, _, _ = stored
    if damage == "garbage":
        path.write_bytes(b"this is not a zip file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:300])
    elif damage == "inconsistent":
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        arrays["offsets"] = arrays["offsets"][:-1]
        with path.open("wb") as handle:
            np.savez(handle, **arrays)
    else:
        path.unlink()
    with pytest.raises(InputError, match="--rebuild_gallery") as err:
        load_local_features(path, fingerprint=FINGERPRINT)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_enrolment_appends_and_replaces_without_touching_the_rest(stored) -> None:
    path, features, paths = stored
    new = [_features(3), _features(4)]
    added = add_local_features(
        path,
        new,
        fingerprint=FINGERPRINT,
        image_paths=["data/c/c_1.jpg", paths[0]],  # a new photo, and a re-enrolled one
        settings=SETTINGS,
    )
    store = load_local_features(path, fingerprint=FINGERPRINT)
    assert store.image_paths == added.image_paths == [*paths[1:], "data/c/c_1.jpg", paths[0]]
    _same(store.for_paths([paths[0]])[0], new[1])
    _same(store.for_paths([paths[2]])[0], features[2])


def test_enrolment_with_other_settings_is_refused(stored) -> None:
    path, _, _ = stored
    with pytest.raises(InputError, match="extracted with"):
        add_local_features(
            path,
            [_features(5)],
            fingerprint=FINGERPRINT,
            image_paths=["data/c/c_1.jpg"],
            settings=LocalSettings(max_keypoints=1024, work_size=512),
        )


def test_removal_drops_only_the_named_photos(stored) -> None:
    path, features, paths = stored
    remove_local_features(path, fingerprint=FINGERPRINT, image_paths=[paths[0], "not/stored.jpg"])
    store = load_local_features(path, fingerprint=FINGERPRINT)
    assert store.image_paths == paths[1:]
    _same(store.features[1], features[2])
    with pytest.raises(InputError, match=r"no keypoints for 1 gallery photo.*a_1\.jpg"):
        store.for_paths([paths[0]])


def test_an_empty_store_round_trips(tmp_path: Path) -> None:
    path = tmp_path / STORE_NAME
    save_local_features(path, [], fingerprint=FINGERPRINT, image_paths=[], settings=SETTINGS)
    store = load_local_features(path, fingerprint=FINGERPRINT)
    assert store.features == [] and store.image_paths == []


def test_a_store_written_before_foreground_estimates_reads_as_every_keypoint(stored) -> None:
    path, _, paths = stored
    with np.load(path) as data:
        older = {k: data[k] for k in data.files if k != "foreground"}
    with path.open("wb") as handle:
        np.savez(handle, **older)
    store = load_local_features(path, fingerprint=FINGERPRINT)
    assert store.settings.foreground == "none" and store.settings == SETTINGS
    assert store.image_paths == paths
    assert store_name(store.settings) == STORE_NAME
    assert store_name(LocalSettings(foreground="saliency")) != STORE_NAME
