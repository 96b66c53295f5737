"""The SPEC 1.7 transforms and the Dataset that applies them to records."""

import numpy as np
import pytest
import torch
from conftest import make_image
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from retrieval.data.dataset import UNKNOWN_LABEL, ImageDataset, KeyedDataset
from retrieval.data.images import NEUTRAL_BACKGROUND
from retrieval.data.records import ImageRecord
from retrieval.data.scan import scan_folder
from retrieval.data.transforms import (
    build_eval_transform,
    build_train_transform,
    to_model_input,
)
from retrieval.errors import InputError
from retrieval.input_norm import IMAGENET


def _types(transform: T.Compose) -> list[type]:
    return [type(t) for t in transform.transforms]


@pytest.mark.parametrize("size", [32, 48])
@pytest.mark.parametrize("build", [build_train_transform, build_eval_transform])
def test_output_shape_and_dtype(build, size):
    im = Image.new("RGB", (90, 60), (10, 200, 30))
    x = build(size)(im)
    assert x.shape == (3, size, size) and x.dtype == torch.uint8


def test_train_transform_follows_the_spec():
    t = build_train_transform(64)
    assert _types(t) == [
        T.RandomResizedCrop,
        T.RandomHorizontalFlip,
        T.RandomRotation,
        T.ColorJitter,
        T.PILToTensor,
    ]
    crop, flip, rot, jitter = t.transforms[:4]
    assert crop.scale == (0.8, 1.0) and crop.interpolation == InterpolationMode.BICUBIC
    assert flip.p == 0.5
    assert rot.degrees == [-15.0, 15.0] and tuple(rot.fill) == NEUTRAL_BACKGROUND
    assert jitter.brightness == (0.8, 1.2) and jitter.hue == (-0.05, 0.05)
    assert not any(isinstance(s, T.RandomVerticalFlip) for s in t.transforms)


def test_no_flip_when_hflip_is_off():
    t = build_train_transform(64, hflip=False)
    assert T.RandomHorizontalFlip not in _types(t)
    assert len(t.transforms) == len(build_train_transform(64).transforms) - 1


def test_random_erasing_blanks_one_rectangle_with_the_neutral_colour():
    t = build_train_transform(64, random_erasing=1.0)
    assert _types(t)[-1] is T.RandomErasing and len(t.transforms) == 6
    torch.manual_seed(0)
    assert t(Image.new("RGB", (90, 70))).shape == (3, 64, 64)
    x = t.transforms[-1](torch.zeros(3, 64, 64, dtype=torch.uint8))  # rotation fills corners too
    assert x.dtype == torch.uint8
    erased = (x == torch.tensor(NEUTRAL_BACKGROUND, dtype=torch.uint8)[:, None, None]).all(0)
    rows, cols = torch.nonzero(erased, as_tuple=True)
    area = erased.sum().item()
    # one axis-aligned rectangle, filled whole, of 2-33% of the image
    assert 0.02 * 64 * 64 <= area <= 0.34 * 64 * 64
    assert area == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert T.RandomErasing not in _types(build_train_transform(64))


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_random_erasing_must_be_a_probability(bad):
    with pytest.raises(InputError, match="--random_erasing"):
        build_train_transform(32, random_erasing=bad)


def test_eval_transform_is_deterministic_and_keeps_aspect():
    t = build_eval_transform(32)
    assert _types(t) == [T.Resize, T.CenterCrop, T.PILToTensor]
    assert t.transforms[0].size == 32  # an int: the shorter side, aspect kept
    assert t.transforms[0].interpolation == InterpolationMode.BICUBIC
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 256, (40, 100, 3), dtype=np.uint8))
    assert torch.equal(t(im), t(im))


def test_neutral_background_is_about_zero_after_imagenet_normalisation():
    x = build_eval_transform(16)(Image.new("RGB", (16, 16), NEUTRAL_BACKGROUND))
    assert IMAGENET.apply(x[None]).abs().max() < 0.01


def test_model_input_is_the_normalised_batch_in_the_asked_memory_format():
    rng = np.random.default_rng(3)
    im = Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
    reference = T.Normalize(IMAGENET.mean, IMAGENET.std)(T.ToTensor()(im))
    got = to_model_input(
        T.PILToTensor()(im)[None], device=torch.device("cpu"), channels_last=True, norm=IMAGENET
    )
    assert got.dtype == torch.float32 and got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got[0], reference, atol=1e-5, rtol=1e-5)


def test_train_transform_is_seedable():
    im = Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    t = build_train_transform(32)
    torch.manual_seed(5)
    a = t(im)
    torch.manual_seed(5)
    b = t(im)
    assert torch.equal(a, b)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_image_size(bad):
    with pytest.raises(InputError, match="--image_size"):
        build_eval_transform(bad)


# ImageDataset ------------------------------------------------------------------------------


def test_dataset_yields_tensors_and_label_indices(tiny_data):
    records = scan_folder(tiny_data)
    class_to_idx = {name: i for i, name in enumerate(sorted({r.label for r in records}))}
    ds = ImageDataset(records, class_to_idx, build_eval_transform(32))
    assert len(ds) == 34
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8
    assert y == class_to_idx[records[0].label]
    assert ds.labels == [class_to_idx[r.label] for r in records]
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=5)))
    assert batch[0].shape == (5, 3, 32, 32) and batch[1].dtype == torch.int64


def test_dataset_unknown_labels(tmp_path):
    path = make_image(tmp_path / "q" / "q_1.png", mode="RGBA")
    records = [ImageRecord(path, "stranger", "q")]
    assert ImageDataset(records, None, build_eval_transform(16)).labels == [UNKNOWN_LABEL]
    ds = ImageDataset(records, {"known": 0}, build_eval_transform(16))
    x, y = ds[0]
    assert y == UNKNOWN_LABEL
    assert IMAGENET.apply(x[None])[0, :, :, 0].abs().max() < 0.01  # transparent edge: ~zero


def test_keyed_dataset_augments_by_key_alone_in_any_loader_worker(tiny_data):
    records = scan_folder(tiny_data)[:4]
    keyed = KeyedDataset(ImageDataset(records, None, build_train_transform(32)))
    before = torch.get_rng_state()
    first, again, other = keyed[(0, 7)][0], keyed[(0, 7)][0], keyed[(0, 8)][0]
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's generator is untouched
    batches = [[(i, 100 + i) for i in range(4)]]
    pixels = [
        next(iter(torch.utils.data.DataLoader(keyed, batch_sampler=batches, num_workers=n)))[0]
        for n in (0, 2)
    ]
    assert torch.equal(pixels[0], pixels[1])
