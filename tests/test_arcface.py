"""ArcFace head against hand-computed angles (numpy), and its numerical safety."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from retrieval.errors import InputError
from retrieval.model.arcface import ArcFaceHead

# Three class centres in 2-D at 0, 90 and 180 degrees.
CENTRE_ANGLES = np.array([0.0, 90.0, 180.0])


def _head_2d(*, scale: float = 64.0, margin_rad: float = 0.5) -> ArcFaceHead:
    head = ArcFaceHead(2, 3, scale=scale, margin_rad=margin_rad)
    rad = np.deg2rad(CENTRE_ANGLES)
    # Scaled centres: the head must normalise them itself.
    centres = np.stack([np.cos(rad), np.sin(rad)], axis=1) * np.array([[2.0], [0.5], [3.0]])
    with torch.no_grad():
        head.weight.copy_(torch.tensor(centres, dtype=torch.float32))
    return head


def _unit(angles_deg: list[float]) -> torch.Tensor:
    rad = np.deg2rad(angles_deg)
    return torch.tensor(np.stack([np.cos(rad), np.sin(rad)], axis=1), dtype=torch.float32)


def _expected_logits(angles_deg, labels, *, scale, margin_rad) -> np.ndarray:
    """Hand computation: angle between each embedding and each centre, margin on the target."""
    theta = np.deg2rad(np.abs(np.asarray(angles_deg)[:, None] - CENTRE_ANGLES[None, :]))
    theta = np.minimum(theta, 2 * np.pi - theta)  # (B, C) in [0, pi]
    logits = np.cos(theta)
    for row, label in enumerate(labels):
        t = theta[row, label]
        if t + margin_rad < np.pi:
            logits[row, label] = np.cos(t + margin_rad)
        else:  # insightface fallback
            logits[row, label] = np.cos(t) - margin_rad * np.sin(margin_rad)
    return scale * logits


@pytest.mark.parametrize("margin_rad", [0.0, 0.3, 0.5])
@pytest.mark.parametrize("scale", [64.0, 48.0])
def test_logits_match_hand_computation(margin_rad, scale):
    angles = [30.0, 30.0, 100.0, 170.0, 175.0]
    labels = [0, 1, 2, 0, 0]  # the last two: theta + m >= pi for m=0.5 (fallback branch)
    head = _head_2d(scale=scale, margin_rad=margin_rad)
    logits = head(_unit(angles) * 7.0, torch.tensor(labels))  # unnormalised input
    assert logits.dtype == torch.float32
    assert logits.shape == (5, 3)
    expected = _expected_logits(angles, labels, scale=scale, margin_rad=margin_rad)
    np.testing.assert_allclose(logits.detach().numpy(), expected, rtol=1e-5, atol=1e-4)


def test_margin_zero_is_plain_scaled_cosine_softmax():
    gen = torch.Generator().manual_seed(0)
    head = ArcFaceHead(16, 5, scale=30.0, margin_rad=0.0)
    x = torch.randn(8, 16, generator=gen)
    labels = torch.randint(0, 5, (8,), generator=gen)
    cosines = F.normalize(x, dim=1) @ F.normalize(head.weight, dim=1).T
    torch.testing.assert_close(head(x, labels), 30.0 * cosines)
    torch.testing.assert_close(head.loss(x, labels), F.cross_entropy(30.0 * cosines, labels))


def test_fallback_branch_near_pi():
    m = 0.5
    head = _head_2d(scale=1.0, margin_rad=m)
    theta_deg = 179.0  # theta + m > pi
    logits = head(_unit([theta_deg]), torch.tensor([0]))
    theta = math.radians(theta_deg)
    assert logits[0, 0].item() == pytest.approx(math.cos(theta) - m * math.sin(m), abs=1e-5)
    assert logits[0, 0].item() < -1.0  # below cos(pi): never a reward for a larger angle


@pytest.mark.parametrize("margin_rad", [0.1, 0.5, 1.0, 1.5])
def test_target_logit_never_increases_with_the_angle(margin_rad):
    head = _head_2d(scale=1.0, margin_rad=margin_rad)
    angles = np.linspace(0.5, 179.5, 400)
    target = head(_unit(list(angles)), torch.zeros(400, dtype=torch.long))[:, 0]
    assert torch.all(torch.diff(target) <= 1e-6)


def test_margin_is_radians_and_settable():
    head = ArcFaceHead(4, 3)
    head.margin_rad = 0.3
    assert head.margin_rad == 0.3
    with pytest.raises(InputError, match="radians"):
        head.margin_rad = 28.6  # degrees by mistake
    with pytest.raises(InputError, match="radians"):
        ArcFaceHead(4, 3, margin_rad=-0.1)
    with pytest.raises(InputError, match="scale"):
        ArcFaceHead(4, 3, scale=0.0)


def test_float32_under_bf16_autocast_on_cpu():
    gen = torch.Generator().manual_seed(1)
    head = ArcFaceHead(32, 6)
    x = torch.randn(4, 32, generator=gen).bfloat16()
    labels = torch.tensor([0, 1, 2, 3])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(x, labels)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, head(x.float(), labels))


def test_gradient_reaches_embeddings_and_centres():
    gen = torch.Generator().manual_seed(2)
    head = ArcFaceHead(8, 4, margin_rad=0.5)
    x = torch.randn(6, 8, generator=gen, requires_grad=True)
    head.loss(x, torch.tensor([0, 1, 2, 3, 0, 1])).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


def test_fp16_inputs_and_exact_centre_hits_stay_finite():
    gen = torch.Generator().manual_seed(3)
    head = ArcFaceHead(64, 5, margin_rad=0.5)
    x = torch.randn(6, 64, generator=gen)
    x[0] = head.weight[2].detach()  # cos = 1 exactly: sqrt(1 - cos^2) at its edge
    x[1] = -head.weight[3].detach()  # cos = -1 exactly
    x = (x * 1e3).half().requires_grad_(True)  # large values overflow nothing in fp32 maths
    labels = torch.tensor([2, 3, 0, 1, 4, 0])
    logits = head(x, labels)
    assert torch.isfinite(logits).all()
    head.loss(x, labels).backward()
    assert torch.isfinite(x.grad).all()
    assert torch.isfinite(head.weight.grad).all()
