"""GeM pooling against numpy and its limits (average at p=1, max as p grows), and its gradient."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from retrieval.errors import InputError
from retrieval.model.gem import GeM


def _positive_maps(shape=(2, 5, 4, 4), seed: int = 0) -> torch.Tensor:
    """(B, C, H, W) float32 in [0.1, 1.1): positive, so the eps clamp never bites."""
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) + 0.1


def _set_p(gem: GeM, p: float) -> GeM:
    with torch.no_grad():
        gem.p.fill_(p)
    return gem


def test_default_p_is_3_learnable_float32():
    gem = GeM()
    assert gem.p.shape == (1,) and gem.p.dtype == torch.float32
    assert gem.p.item() == 3.0
    assert gem.p.requires_grad
    assert not GeM(learnable=False).p.requires_grad


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, 4.5])
def test_matches_numpy_generalized_mean(p):
    x = _positive_maps()
    out = GeM(p)(x)
    assert out.shape == (2, 5, 1, 1) and out.dtype == torch.float32
    expected = np.mean(x.numpy().astype(np.float64) ** p, axis=(2, 3)) ** (1 / p)
    np.testing.assert_allclose(out[:, :, 0, 0].detach().numpy(), expected, rtol=1e-5)


def test_p1_is_average_pooling():
    x = _positive_maps((3, 7, 5, 6))
    torch.testing.assert_close(GeM(1.0)(x), F.adaptive_avg_pool2d(x, 1))


@pytest.mark.parametrize("p", [50.0, 200.0])
def test_large_p_tends_to_max_pooling(p):
    x = _positive_maps()  # 16 positions per channel
    out = GeM(p)(x).detach()
    x_max = F.adaptive_max_pool2d(x, 1)
    # (mean x^p)^(1/p) lies between max * (1/16)^(1/p) and max
    assert torch.all(out <= x_max * (1 + 1e-5))
    assert torch.all(out >= x_max * (1 / 16) ** (1 / p) * (1 - 1e-5))
    gap_avg = (x_max - F.adaptive_avg_pool2d(x, 1)).abs().mean()
    assert (x_max - out).abs().mean() < 0.25 * gap_avg  # much nearer max than average
    if p == 200.0:
        torch.testing.assert_close(out, x_max, rtol=2e-2, atol=0)


def test_non_positive_activations_are_clamped_to_eps():
    x = torch.full((1, 2, 3, 3), -5.0)
    x[0, 1] = 0.0
    out = GeM(3.0, eps=1e-6)(x)
    torch.testing.assert_close(out, torch.full((1, 2, 1, 1), 1e-6))
    assert torch.isfinite(out).all()


def test_p_and_input_get_finite_gradients():
    gem = GeM()
    x = _positive_maps().requires_grad_(True)
    gem(x).sum().backward()
    assert gem.p.grad is not None and gem.p.grad.shape == (1,)
    assert torch.isfinite(gem.p.grad).all() and gem.p.grad.abs().item() > 0
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_gradient_step_moves_p():
    gem = GeM()
    opt = torch.optim.SGD(gem.parameters(), lr=0.5)
    before = gem.p.item()
    gem(_positive_maps()).mean().backward()  # raising p raises the mean: gradient > 0
    opt.step()
    assert gem.p.item() < before


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_float32_under_autocast_and_low_precision_input(dtype):
    gem = GeM()
    x = _positive_maps() * 60.0  # 60^3 overflows float16 (max 65504)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = gem(x.to(dtype))
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, gem(x.to(dtype).float()))


def test_channels_last_input_gives_the_same_result():
    x = _positive_maps()
    torch.testing.assert_close(GeM()(x.to(memory_format=torch.channels_last)), GeM()(x))


@pytest.mark.parametrize("kwargs", [{"p": 0.0}, {"p": -1.0}, {"eps": 0.0}])
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(InputError, match="GeM"):
        GeM(**kwargs)


def test_repr_shows_p():
    assert "p=3.0000" in repr(GeM())
