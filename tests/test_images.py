"""Reading images (modes, alpha, EXIF, broken files) and the image policy with its cache."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image
from PIL import Image, ImageFile

from retrieval.data.images import (
    NEUTRAL_BACKGROUND,
    ImageCheck,
    UnreadableImage,
    check_images,
    image_size,
    load_rgb,
)
from retrieval.data.records import ImageRecord
from retrieval.data.scan import scan_folder
from retrieval.errors import InputError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def test_neutral_background_normalises_to_about_zero():
    normalised = (np.array(NEUTRAL_BACKGROUND) / 255 - IMAGENET_MEAN) / IMAGENET_STD
    assert np.abs(normalised).max() < 0.01


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_on_the_neutral_background(tmp_path, mode):
    path = make_image(tmp_path / "cut_1.png", size=(16, 8), mode=mode, colour=(200, 10, 10))
    src = np.asarray(Image.open(path).convert("RGBA"))
    im = load_rgb(path)
    assert im.mode == "RGB" and im.size == (16, 8)
    px = np.asarray(im)
    assert (px[:, :4] == NEUTRAL_BACKGROUND).all()  # transparent quarter: background exactly
    assert (px[:, 4:] == src[:, 4:, :3]).all()  # opaque part: untouched


def test_half_transparent_pixel_is_blended(tmp_path):
    path = tmp_path / "half_1.png"
    Image.new("RGBA", (2, 2), (255, 255, 255, 128)).save(path)
    px = np.asarray(load_rgb(path)).astype(int)
    expected = np.round(
        np.array(NEUTRAL_BACKGROUND) + (255 - np.array(NEUTRAL_BACKGROUND)) * 128 / 255
    )
    assert np.abs(px[0, 0] - expected).max() <= 1


def test_palette_with_transparency(tmp_path):
    im = Image.new("P", (4, 4), 0)
    im.putpalette([10, 20, 30] + [250, 0, 0] * 255)
    im.putpixel((1, 1), 1)
    path = tmp_path / "pal_1.png"
    im.save(path, transparency=0)
    px = np.asarray(load_rgb(path))
    assert tuple(px[0, 0]) == NEUTRAL_BACKGROUND  # palette index 0 is transparent
    assert tuple(px[1, 1]) == (250, 0, 0)


@pytest.mark.parametrize(
    ("mode", "ext"),
    [("L", "png"), ("P", "png"), ("1", "png"), ("CMYK", "jpg"), ("L", "pgm"), ("RGB", "webp")],
)
def test_modes_become_rgb(tmp_path, mode, ext):
    path = make_image(tmp_path / f"x_1.{ext}", size=(12, 10), mode=mode)
    im = load_rgb(path)
    assert im.mode == "RGB" and im.size == (12, 10)


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 32896], [65535, 257]], dtype=np.uint16)  # 0, 128, 255, 1 in 8 bits
    path = tmp_path / "deep_1.png"
    Image.fromarray(values).save(path)
    px = np.asarray(load_rgb(path))
    assert px.shape == (2, 2, 3)
    assert px[..., 0].tolist() == [[0, 128], [255, 1]]


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (40, 20), (255, 255, 255))
    im.putpixel((0, 0), (0, 0, 0))  # a black corner to follow through the rotation
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rot_1.jpg"
    im.save(path, exif=exif, quality=100)
    out = load_rgb(path)
    assert out.size == (20, 40)
    assert image_size(path) == (20, 40)
    assert np.asarray(out)[0, -1].max() < 60  # top-left went to top-right


def _truncated_jpeg(path: Path) -> Path:
    make_image(path, size=(128, 128))
    data = path.read_bytes()
    assert data.find(b"\xff\xda") < len(data) // 2  # the cut falls inside the pixel data
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


@pytest.mark.parametrize(
    ("write", "match"),
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (_truncated_jpeg, "truncated"),
        (lambda p: p.write_text("this is not a picture"), "not an image"),
        (lambda p: None, "file not found"),
    ],
    ids=["zero-byte", "truncated", "not-an-image", "missing"],
)
def test_unreadable_files_raise_naming_the_path(tmp_path, write, match):
    path = tmp_path / "bad_1.jpg"
    write(path)
    with pytest.raises(UnreadableImage, match=match) as e:
        load_rgb(path)
    assert isinstance(e.value, InputError)
    assert str(path) in str(e.value) and e.value.path == path


def test_truncation_detected_even_if_pillow_is_told_to_tolerate_it(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    path = _truncated_jpeg(tmp_path / "cut_1.jpg")
    with pytest.raises(UnreadableImage, match="truncated"):
        load_rgb(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is restored


def test_decompression_bomb_is_unreadable_not_a_crash(tmp_path, monkeypatch):
    path = make_image(tmp_path / "big_1.png", size=(64, 64))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 4096 px > 2 x limit: Pillow refuses
    with pytest.raises(UnreadableImage, match="too many pixels"):
        load_rgb(path)


# check_images ------------------------------------------------------------------------------


def test_check_keeps_everything_above_min_size(tiny_data):
    records = scan_folder(tiny_data)
    check = check_images(records, min_size=64, progress=False)
    assert check.kept == records
    assert check.too_small == {} and check.unreadable == {} and check.excluded_groups == []
    assert set(check.sizes.values()) == {(64, 64)}


def test_too_small_image_excludes_its_whole_group(tiny_data):
    small = make_image(tiny_data / "red" / "red-g1_3.png", size=(80, 20))  # red-g1: 2 ok images
    check = check_images(scan_folder(tiny_data), min_size=32, progress=False)
    assert check.too_small == {"red-g1": [small]}
    assert check.excluded_groups == ["red-g1"]
    assert not [r for r in check.kept if r.group == "red-g1"]
    assert len(check.kept) == 34 - 2


def test_unreadable_file_skips_only_that_file(tiny_data):
    bad = _truncated_jpeg(tiny_data / "blue" / "blue-g1_3.jpg")
    check = check_images(scan_folder(tiny_data), min_size=32, progress=False)
    assert list(check.unreadable) == [bad] and "truncated" in check.unreadable[bad]
    assert len([r for r in check.kept if r.group == "blue-g1"]) == 2  # the good ones stay
    assert check.too_small == {}


def test_min_size_zero_keeps_all(tiny_data):
    make_image(tiny_data / "red" / "tiny-one_1.png", size=(3, 3))
    check = check_images(scan_folder(tiny_data), min_size=0, progress=False)
    assert len(check.kept) == 35


def _freeze_then_corrupt(path: Path) -> None:
    """Break a file but keep its size and mtime: only a cache can still call it readable."""
    st = path.stat()
    path.write_bytes(b"\0" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_cache_skips_decoding_and_min_size_needs_no_redecode(tiny_data, tmp_path):
    records = scan_folder(tiny_data)
    cache = tmp_path / "work" / "cache" / "image_check.json"
    first = check_images(records, min_size=32, cache_path=cache, progress=False)
    stored = json.loads(cache.read_text())
    assert stored["version"] == 1 and len(stored["files"]) == 34
    victim = records[0].path
    _freeze_then_corrupt(victim)
    again = check_images(records, min_size=32, cache_path=cache, progress=False)
    assert again.kept == first.kept  # served from the cache: the file was not decoded again
    stricter = check_images(records, min_size=65, cache_path=cache, progress=False)
    assert stricter.kept == [] and len(stricter.too_small) == 24
    os.utime(victim)  # now the change is visible (new mtime): decoded again, found broken
    changed = check_images(records, min_size=32, cache_path=cache, progress=False)
    assert victim in changed.unreadable
    assert str(victim) not in json.loads(cache.read_text())["files"]


def test_damaged_cache_is_rebuilt(tiny_data, tmp_path):
    cache = tmp_path / "image_check.json"
    cache.write_text("{ not json")
    check = check_images(scan_folder(tiny_data), min_size=32, cache_path=cache, progress=False)
    assert len(check.kept) == 34
    assert len(json.loads(cache.read_text())["files"]) == 34


def test_thread_pool_gives_the_same_result(tiny_data):
    _truncated_jpeg(tiny_data / "blue" / "blue-g1_3.jpg")
    make_image(tiny_data / "red" / "red-g0_2.png", size=(10, 40))
    records = scan_folder(tiny_data)
    one = check_images(records, min_size=32, num_workers=1, progress=False)
    two = check_images(records, min_size=32, num_workers=2, progress=False)
    assert one == two
    assert isinstance(one, ImageCheck) and one.excluded_groups == ["red-g0"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"min_size": -1}, "--min_size"), ({"min_size": 8, "num_workers": 0}, "--num_workers")],
)
def test_check_rejects_bad_arguments(kwargs, match):
    record = ImageRecord(path=Path("/x_1.png"), label="a", group="x")
    with pytest.raises(InputError, match=match):
        check_images([record], progress=False, **kwargs)


@pytest.mark.shared_data
def test_real_rgba_cutout_composites(shared_data):
    path = shared_data / "dogs_kaggle" / "train" / "train_0001.png"
    with Image.open(path) as raw:
        assert raw.mode == "RGBA"
        alpha = np.asarray(raw.getchannel("A"))
    px = np.asarray(load_rgb(path))
    assert (px[alpha == 0] == NEUTRAL_BACKGROUND).all()
