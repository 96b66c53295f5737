"""EmbeddingModel: output contract, frozen BatchNorm statistics, phase-1 freezing, GeM pooling."""

import pytest
import timm
import torch
from torch import nn

from retrieval.errors import InputError
from retrieval.model.embedder import (
    EmbeddingModel,
    backbone_stages,
    build_embedding_model,
    check_frozen_stages,
)

# Tiny random-init timm models; mobilenetv3 has head_hidden_size != num_features.
BACKBONES = ["test_efficientnet", "test_resnet", "mobilenetv3_small_050"]


def _images(batch: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _bn_layers(model: EmbeddingModel) -> list[nn.Module]:
    return [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]


def _bn_stats(model: EmbeddingModel) -> list[torch.Tensor]:
    return [t.clone() for m in _bn_layers(model) for t in (m.running_mean, m.running_var)]


@pytest.mark.parametrize("backbone", BACKBONES)
def test_output_is_unit_float32(backbone):
    model = build_embedding_model(backbone, pretrained="none").eval()
    with torch.no_grad():
        out = model(_images())
    assert out.shape == (4, 512)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4))
    assert model.backbone_name == backbone
    assert model.embedding_dim == 512
    assert "random init" in model.weights_description


def test_embedding_dim_is_configurable_and_checked():
    model = build_embedding_model("test_efficientnet", embedding_dim=64, pretrained="none")
    assert model.eval()(_images(2)).shape == (2, 64)
    with pytest.raises(InputError, match="embedding_dim"):
        build_embedding_model("test_efficientnet", embedding_dim=0, pretrained="none")


def test_bf16_autocast_still_returns_float32_unit_vectors():
    model = build_embedding_model("test_efficientnet", pretrained="none").eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(_images(2))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))


@pytest.mark.parametrize("backbone", BACKBONES[:2])
def test_batchnorm_stays_frozen_in_train_mode(backbone):
    model = build_embedding_model(backbone, pretrained="none")
    model.train()
    assert model.training and model.neck.training
    assert _bn_layers(model)
    assert not any(m.training for m in _bn_layers(model))
    before = _bn_stats(model)
    model(_images()).sum().backward()
    for old, new in zip(before, _bn_stats(model), strict=True):
        torch.testing.assert_close(old, new, rtol=0, atol=0)
    # the affine BN weights still learn
    assert any(m.weight.grad is not None for m in _bn_layers(model))


def test_bn_train_updates_running_statistics():
    model = build_embedding_model("test_efficientnet", pretrained="none", bn_train=True)
    model.train()
    assert all(m.training for m in _bn_layers(model))
    before = _bn_stats(model)
    model(_images())
    changed = [not torch.equal(a, b) for a, b in zip(before, _bn_stats(model), strict=True)]
    assert any(changed)


def test_frozen_backbone_is_in_eval_mode_and_gets_no_gradient():
    model = build_embedding_model("test_efficientnet", pretrained="none", bn_train=True)
    model.set_backbone_trainable(False)
    model.train()
    assert not model.backbone_trainable
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.neck.parameters())
    assert not any(m.training for m in model.backbone.modules())  # bn_train yields to freezing
    assert model.neck.training
    model(_images()).sum().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.neck.weight.grad is not None

    model.set_backbone_trainable(True)
    assert all(p.requires_grad for p in model.backbone.parameters())
    assert all(m.training for m in _bn_layers(model))  # bn_train=True: BN trains again


@pytest.mark.parametrize(("backbone", "frozen", "first_trained"), [
    ("test_efficientnet", 2, "blocks.2."),
    ("test_resnet", 1, "layer2."),
])  # fmt: skip
def test_frozen_stages_stay_frozen_and_in_eval_mode_after_the_warm_up(
    backbone, frozen, first_trained
):
    model = build_embedding_model(backbone, pretrained="none", bn_train=True)
    model.set_backbone_trainable(False)
    model.set_backbone_trainable(True, frozen_stages=frozen)
    model.train()
    names = [name for name, _ in model.backbone.named_parameters()]
    trained = [name for name, p in model.backbone.named_parameters() if p.requires_grad]
    assert trained == names[names.index(trained[0]) :]  # one frozen prefix, input side first
    assert trained[0].startswith(first_trained)
    assert len(names) > len(trained) > 0
    frozen_modules = [m for m in model.backbone.modules() if list(m.parameters())]
    frozen_modules = [m for m in frozen_modules if not any(p.requires_grad for p in m.parameters())]
    assert frozen_modules and not any(m.training for m in frozen_modules)
    assert any(m.training for m in _bn_layers(model))  # bn_train: the trained stages' BN trains
    model(_images()).sum().backward()
    grads = {name: p.grad for name, p in model.backbone.named_parameters()}
    assert all(grads[name] is None for name in names if name not in trained)
    assert all(grads[name] is not None for name in trained)

    model.set_backbone_trainable(True)  # 0: the whole backbone trains again
    assert all(p.requires_grad for p in model.backbone.parameters())


def test_frozen_stages_beyond_the_last_stage_name_the_range():
    model = build_embedding_model("test_efficientnet", pretrained="none")
    stages = len(backbone_stages(model.backbone, "test_efficientnet")) - 1
    check_frozen_stages(model.backbone, "test_efficientnet", stages - 1)
    with pytest.raises(InputError, match=rf"has {stages} stages.*0 \(all train\) to {stages - 1}"):
        check_frozen_stages(model.backbone, "test_efficientnet", stages)


def test_a_backbone_without_named_stages_trains_whole_and_refuses_frozen_stages():
    backbone = nn.Sequential(nn.Conv2d(3, 4, 3))
    check_frozen_stages(backbone, "plain_sequential", 0)  # the default needs no stage names
    with pytest.raises(InputError, match="--frozen_stages 0"):
        check_frozen_stages(backbone, "plain_sequential", 1)


def test_eval_mode_is_plain_eval():
    model = build_embedding_model("test_resnet", pretrained="none")
    model.eval()
    assert not any(m.training for m in model.modules())


def test_unknown_backbone_names_the_lookup():
    with pytest.raises(InputError, match=r"no_such_net.*timm.list_models"):
        build_embedding_model("no_such_net", pretrained="none")


@pytest.mark.parametrize("pooling", ["max", "GeM", ""])
def test_unknown_pooling_is_refused(pooling):
    with pytest.raises(InputError, match=r"pooling.*allowed: avg, gem"):
        build_embedding_model("test_resnet", pretrained="none", pooling=pooling)
    backbone = timm.create_model("test_resnet", num_classes=0)
    with pytest.raises(InputError, match="pooling"):
        EmbeddingModel(backbone, backbone_name="test_resnet", pooling=pooling)


def test_state_dict_round_trip_rebuilds_the_same_model():
    a = build_embedding_model("test_efficientnet", pretrained="none").eval()
    b = build_embedding_model("test_efficientnet", pretrained="none").eval()
    b.load_state_dict(a.state_dict())
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


# ----------------------------------------------------------------------------- GeM pooling


@pytest.mark.parametrize("backbone", BACKBONES)
def test_gem_output_is_unit_float32(backbone):
    model = build_embedding_model(backbone, pretrained="none", pooling="gem").eval()
    assert model.pooling == "gem"
    with torch.no_grad():
        out = model(_images())
    assert out.shape == (4, 512)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4))
    assert model.pool.p.item() == 3.0


@pytest.mark.parametrize("backbone", BACKBONES)
def test_gem_backbone_is_timm_without_global_pool(backbone):
    """Same module as timm.create_model(name, num_classes=0, global_pool=""): feature maps out."""
    model = build_embedding_model(backbone, pretrained="none", pooling="gem").eval()
    reference = timm.create_model(backbone, num_classes=0, global_pool="").eval()
    assert model.backbone.state_dict().keys() == reference.state_dict().keys()
    reference.load_state_dict(model.backbone.state_dict())
    x = _images(2)
    with torch.no_grad():
        maps = model.backbone(x)
        torch.testing.assert_close(maps, reference(x))
    assert maps.ndim == 4 and maps.shape[:2] == (2, model.neck.in_features)


def test_gem_at_p1_equals_average_pooling_model():
    """test_resnet ends in ReLU: non-negative maps, so GeM(p=1) is the plain mean."""
    # Seeded weights: GeM clamps zeros to eps=1e-6 before pooling, which unit-normalisation of
    # a random-init embedding magnifies past the tolerance for some draws of the weights.
    torch.manual_seed(0)
    avg = build_embedding_model("test_resnet", pretrained="none").eval()
    gem = build_embedding_model("test_resnet", pretrained="none", pooling="gem").eval()
    gem.backbone.load_state_dict(avg.backbone.state_dict())
    gem.neck.load_state_dict(avg.neck.state_dict())
    with torch.no_grad():
        gem.pool.p.fill_(1.0)
        x = _images(size=96)  # a 3x3 feature map: pooling matters
        assert avg.backbone.forward_features(x).shape[-2:] == (3, 3)
        torch.testing.assert_close(gem(x), avg(x), rtol=1e-4, atol=1e-4)
        gem.pool.p.fill_(3.0)
        assert not torch.allclose(gem(x), avg(x), atol=1e-3)


def test_avg_pooling_adds_no_state():
    model = build_embedding_model("test_efficientnet", pretrained="none")
    assert model.pooling == "avg"
    keys = set(model.state_dict())
    assert all(k.startswith(("backbone.", "neck.")) for k in keys)
    assert not list(model.pool.parameters())
    assert {k for k in keys if k.startswith("neck.")} == {"neck.weight", "neck.bias"}


def test_gem_p_trains_while_the_backbone_is_frozen():
    model = build_embedding_model("test_efficientnet", pretrained="none", pooling="gem")
    model.set_backbone_trainable(False)
    model.train()
    assert model.pool.p.requires_grad
    model(_images()).sum().backward()
    assert model.pool.p.grad is not None and torch.isfinite(model.pool.p.grad).all()
    assert model.pool.p.grad.abs().item() > 0
    assert all(p.grad is None for p in model.backbone.parameters())
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == {"pool.p", "neck.weight", "neck.bias"}


def test_gem_under_bf16_autocast_returns_float32_unit_vectors():
    model = build_embedding_model("test_efficientnet", pretrained="none", pooling="gem").eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(_images(2))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))


def test_gem_state_dict_round_trip_keeps_p():
    a = build_embedding_model("test_efficientnet", pretrained="none", pooling="gem").eval()
    with torch.no_grad():
        a.pool.p.fill_(2.5)
    assert "pool.p" in a.state_dict()
    b = build_embedding_model("test_efficientnet", pretrained="none", pooling="gem").eval()
    b.load_state_dict(a.state_dict())
    assert b.pool.p.item() == 2.5
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


def test_gem_refuses_a_backbone_without_feature_maps():
    model = build_embedding_model("test_vit", pretrained="none", pooling="gem").eval()
    with pytest.raises(InputError, match=r"test_vit.*--pooling avg"):
        model(_images(1, size=160))
