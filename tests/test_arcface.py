"""ArcFace head against hand-computed angles: margins (scalar, per class), sub-centres, safety."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from retrieval.errors import InputError
from retrieval.model.arcface import ArcFaceHead, dynamic_margins

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


# ----------------------------------------------------------------------- sub-center ArcFace


def _reference_head_logits(weight, embeddings, labels, *, scale, margin_rad):
    """The single-centre head's forward as first committed, kept verbatim as the k=1 oracle."""
    x = F.normalize(embeddings.float(), dim=1)
    w = F.normalize(weight.float(), dim=1)
    cos = (x @ w.T).clamp(-1.0 + 1e-7, 1.0 - 1e-7)
    target = labels.long().unsqueeze(1)
    cos_y = cos.gather(1, target)
    m = margin_rad
    if m != 0.0:
        sin_y = torch.sqrt(1.0 - cos_y * cos_y)
        cos_y_plus_m = cos_y * math.cos(m) - sin_y * math.sin(m)
        cos_y = torch.where(cos_y > math.cos(math.pi - m), cos_y_plus_m, cos_y - m * math.sin(m))
    return scale * cos.scatter(1, target, cos_y)


@pytest.mark.parametrize("margin_rad", [0.0, 0.5])
def test_one_subcenter_is_bit_identical_to_the_plain_head(margin_rad):
    with torch.random.fork_rng():
        torch.manual_seed(123)
        head = ArcFaceHead(16, 5, scale=64.0, margin_rad=margin_rad, subcenters=1)
        torch.manual_seed(123)
        plain_init = torch.nn.init.xavier_uniform_(torch.empty(5, 16))
    assert head.weight.shape == (5, 16)
    assert torch.equal(head.weight.detach(), plain_init)  # same initialisation draw
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(9, 16, generator=gen)
    labels = torch.randint(0, 5, (9,), generator=gen)
    expected = _reference_head_logits(
        head.weight.detach(), x, labels, scale=64.0, margin_rad=margin_rad
    )
    assert torch.equal(head(x, labels).detach(), expected)


def _subcenter_head_2d(subcenter_deg: list[list[float]], *, margin_rad: float) -> ArcFaceHead:
    k = len(subcenter_deg[0])
    head = ArcFaceHead(2, len(subcenter_deg), scale=1.0, margin_rad=margin_rad, subcenters=k)
    rad = np.deg2rad(np.asarray(subcenter_deg, dtype=float).reshape(-1))  # class-major rows
    with torch.no_grad():
        head.weight.copy_(torch.tensor(np.stack([np.cos(rad), np.sin(rad)], 1) * 3.0))
    return head


def test_three_subcenters_use_the_nearest_one():
    subcentres = [[0.0, 120.0, 240.0], [90.0, 200.0, 300.0]]  # degrees, k=3 per class
    m = 0.3
    head = _subcenter_head_2d(subcentres, margin_rad=m)
    assert head.weight.shape == (6, 2)
    angles = [10.0, 110.0, 250.0, 310.0]
    labels = [0, 0, 1, 1]
    logits = head(_unit(angles), torch.tensor(labels)).detach().numpy()
    # Hand check: the angle to a class is the smallest angle to any of its sub-centres.
    # x=10: class 0 via 0 (10 deg; 110, 130), class 1 via 300 (70; 80 to 90, 170 to 200)
    # x=110: class 0 via 120 (10), class 1 via 90 (20)
    # x=250: class 0 via 240 (10), class 1 via 200 (50) and 300 (50)
    # x=310: class 0 via 0 (50; 70 to 240), class 1 via 300 (10)
    nearest_deg = np.array([[10.0, 70.0], [10.0, 20.0], [10.0, 50.0], [50.0, 10.0]])
    expected = np.cos(np.deg2rad(nearest_deg))
    for row, label in enumerate(labels):
        expected[row, label] = np.cos(np.deg2rad(nearest_deg[row, label]) + m)
    np.testing.assert_allclose(logits, expected, atol=1e-5)


def test_only_the_winning_subcenter_gets_a_gradient():
    head = _subcenter_head_2d([[0.0, 120.0, 240.0], [90.0, 200.0, 300.0]], margin_rad=0.3)
    head.loss(_unit([110.0]), torch.tensor([0])).backward()
    row_norms = head.weight.grad.norm(dim=1)
    # x=110: class 0's winner is row 1 (120 deg), class 1's is row 3 (90 deg)
    assert row_norms[1] > 0 and row_norms[3] > 0
    assert torch.all(row_norms[[0, 2, 4, 5]] == 0)


@pytest.mark.parametrize("subcenters", [0, -1, 2.0, True])
def test_bad_subcenters_are_refused(subcenters):
    with pytest.raises(InputError, match="subcenters"):
        ArcFaceHead(4, 3, subcenters=subcenters)


# ----------------------------------------------------------------- dynamic per-class margins


@pytest.mark.parametrize(("a", "b"), [(0.5, 0.05), (0.3, 0.1)])
def test_dynamic_margins_formula_by_hand(a, b):
    margins = dynamic_margins([1, 16, 81, 10_000], a=a, b=b)
    assert margins.dtype == torch.float32 and margins.shape == (4,)
    expected = [a * 1 + b, a * 0.5 + b, a / 3 + b, a * 0.1 + b]  # n^(-1/4) = 1, 1/2, 1/3, 1/10
    np.testing.assert_allclose(margins.numpy(), expected, rtol=1e-6)


def test_dynamic_margins_default_coefficients():
    np.testing.assert_allclose(dynamic_margins([1, 16]).numpy(), [0.55, 0.3], rtol=1e-6)


def test_dynamic_margins_rescaled_to_low_high():
    # raw = a * [1, 1/2, 1/4] + b: min-max -> [1, 1/3, 0] of the way from low to high
    margins = dynamic_margins([1, 16, 256], low=0.2, high=0.5)
    np.testing.assert_allclose(margins.numpy(), [0.5, 0.2 + 0.3 / 3, 0.2], rtol=1e-6)
    # one count for every class: all at the midpoint
    np.testing.assert_allclose(dynamic_margins([7, 7], low=0.2, high=0.5).numpy(), [0.35, 0.35])


@pytest.mark.parametrize(
    ("counts", "kwargs", "match"),
    [
        ([3, 0], {}, ">= 1"),
        ([], {}, ">= 1"),
        ([1, 2], {"low": 0.2}, "both low and high"),
        ([1, 2], {"low": 0.5, "high": 0.2}, "low <= high"),
        ([1, 2], {"low": 0.1, "high": 2.0}, "low <= high"),
        ([1, 2], {"a": 2.0}, "radians"),
        ([1, 2], {"b": -0.6}, "radians"),
    ],
)
def test_dynamic_margins_bad_input(counts, kwargs, match):
    with pytest.raises(InputError, match=match):
        dynamic_margins(counts, **kwargs)


CLASS_MARGINS = [0.1, 0.4, 0.6]


@pytest.mark.parametrize("scale", [1.0, 48.0])
def test_per_class_margin_logits_match_hand_computation(scale):
    head = ArcFaceHead(2, 3, scale=scale, margin_rad=0.5, class_margins=torch.tensor(CLASS_MARGINS))
    head.weight.data.copy_(_head_2d().weight.data)
    angles = [30.0, 30.0, 100.0, 175.0, 160.0, 150.0]
    labels = [0, 1, 2, 0, 0, 2]  # 175 deg + 0.1 rad passes pi: class 0's fallback
    logits = head(_unit(angles), torch.tensor(labels)).detach().numpy()
    theta = np.deg2rad(np.abs(np.asarray(angles)[:, None] - CENTRE_ANGLES[None, :]))
    theta = np.minimum(theta, 2 * np.pi - theta)
    expected = np.cos(theta)
    for row, label in enumerate(labels):
        m, t = CLASS_MARGINS[label], theta[row, label]
        expected[row, label] = np.cos(t + m) if t + m < np.pi else np.cos(t) - m * np.sin(m)
    np.testing.assert_allclose(logits, scale * expected, rtol=1e-5, atol=1e-4)
    assert 175.0 + np.rad2deg(CLASS_MARGINS[0]) > 180.0  # the fallback branch was exercised


def test_equal_class_margins_equal_the_scalar_margin():
    gen = torch.Generator().manual_seed(5)
    scalar = ArcFaceHead(8, 4, margin_rad=0.35)
    per_class = ArcFaceHead(8, 4, margin_rad=0.35, class_margins=torch.full((4,), 0.35))
    per_class.load_state_dict({**scalar.state_dict(), "class_margins": torch.full((4,), 0.35)})
    x = torch.randn(10, 8, generator=gen)
    labels = torch.randint(0, 4, (10,), generator=gen)
    torch.testing.assert_close(per_class(x, labels), scalar(x, labels))


def test_phase_one_margin_zero_switches_class_margins_off():
    gen = torch.Generator().manual_seed(6)
    margins = dynamic_margins([1, 2, 5, 40, 3])
    head = ArcFaceHead(16, 5, scale=30.0, margin_rad=0.0, class_margins=margins)
    x = torch.randn(8, 16, generator=gen)
    labels = torch.randint(0, 5, (8,), generator=gen)
    cosines = F.normalize(x, dim=1) @ F.normalize(head.weight, dim=1).T
    torch.testing.assert_close(head(x, labels), 30.0 * cosines)  # phase 1: plain softmax
    head.margin_rad = 0.5  # phase 2: the class margins, not 0.5
    target_cos = cosines.gather(1, labels[:, None]).clamp(-1 + 1e-7, 1 - 1e-7)
    m = margins[labels][:, None]
    expected = 30.0 * torch.cos(torch.arccos(target_cos) + m)
    torch.testing.assert_close(head(x, labels).gather(1, labels[:, None]), expected)


@pytest.mark.parametrize(
    "margins", [[0.1, 0.2], [0.1, 0.2, 0.3, 0.4], [0.1, -0.2, 0.3], [0.1, 1.6, 0.3]]
)
def test_bad_class_margins_are_refused(margins):
    with pytest.raises(InputError, match="class_margins"):
        ArcFaceHead(4, 3, class_margins=torch.tensor(margins))


def test_class_margins_are_a_float32_buffer_and_absent_by_default():
    assert set(ArcFaceHead(4, 3).state_dict()) == {"weight"}  # old checkpoints still load
    head = ArcFaceHead(4, 3, class_margins=torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64))
    assert head.class_margins.dtype == torch.float32
    assert "class_margins" in head.state_dict()
    assert "class_margins" in dict(head.named_buffers())
    assert not any(p is head.class_margins for p in head.parameters())


@pytest.mark.parametrize("margins", [[0.1, 0.5, 1.0], [1.5, 0.0, 0.3]])
def test_per_class_target_logit_never_increases_with_the_angle(margins):
    head = ArcFaceHead(2, 3, scale=1.0, margin_rad=0.5, class_margins=torch.tensor(margins))
    head.weight.data.copy_(_head_2d().weight.data)
    angles = np.linspace(0.5, 179.5, 400)
    for label in range(3):
        target_angles = list(angles + CENTRE_ANGLES[label])
        labels = torch.full((400,), label, dtype=torch.long)
        target = head(_unit(target_angles), labels)[:, label]
        assert torch.all(torch.diff(target) <= 1e-6)


def test_subcenters_and_class_margins_float32_under_bf16_autocast():
    gen = torch.Generator().manual_seed(7)
    head = ArcFaceHead(32, 6, subcenters=3, class_margins=dynamic_margins([1, 2, 3, 4, 5, 6]))
    x = torch.randn(5, 32, generator=gen).bfloat16().requires_grad_(True)
    labels = torch.tensor([0, 1, 2, 3, 5])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(x, labels)
        loss = head.loss(x, labels)
    assert logits.dtype == torch.float32 and logits.shape == (5, 6)
    torch.testing.assert_close(logits, head(x.float(), labels))
    loss.backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()


def test_imprint_sets_each_centre_to_its_mean_direction_and_keeps_the_norms():
    head = ArcFaceHead(2, 3, subcenters=2)
    norms = head.weight.detach().norm(dim=1).clone()
    untouched = head.weight.detach()[4:].clone()  # class 2 has no embedding
    embeddings = _unit([0.0, 90.0, 80.0, 100.0]) * torch.tensor([[1.0], [5.0], [1.0], [1.0]])
    assert head.imprint_(embeddings, torch.tensor([0, 1, 1, 1])) == 2
    w = head.weight.detach()
    np.testing.assert_allclose(w.norm(dim=1).numpy(), norms.numpy(), rtol=1e-6)
    direction = F.normalize(w, dim=1).numpy()
    # class 0: 0 degrees; class 1: the mean of unit vectors at 90, 80, 100 (the 5x length of
    # one of them does not count) is 90 degrees; both sub-centres of a class start equal.
    np.testing.assert_allclose(direction[:4], _unit([0.0, 0.0, 90.0, 90.0]), atol=1e-6)
    torch.testing.assert_close(w[4:], untouched)


def test_imprint_centred_spreads_classes_that_share_one_direction():
    # two classes inside a 10-degree cone: their plain means are 8 degrees apart; with the
    # mean of all four removed first they point away from each other
    embeddings, labels = _unit([40.0, 42.0, 48.0, 50.0]), torch.tensor([0, 0, 1, 1])
    plain, centred = ArcFaceHead(2, 2), ArcFaceHead(2, 2)
    plain.imprint_(embeddings, labels)
    centred.imprint_(embeddings, labels, centred=True)
    x = embeddings.numpy()
    by_hand = np.stack([x[:2].mean(0), x[2:].mean(0)]) - x.mean(0)
    by_hand /= np.linalg.norm(by_hand, axis=1, keepdims=True)
    direction = F.normalize(centred.weight.detach(), dim=1)
    np.testing.assert_allclose(direction.numpy(), by_hand, atol=1e-6)
    cos_between = [F.normalize(h.weight.detach(), dim=1).prod(0).sum() for h in (plain, centred)]
    assert cos_between[0] == pytest.approx(math.cos(math.radians(8.0)), abs=1e-5)
    assert cos_between[1] == pytest.approx(-1.0, abs=1e-5)


def test_imprint_refuses_embeddings_of_another_width():
    head = ArcFaceHead(4, 3)
    with pytest.raises(InputError, match="do not fit a head of dimension 4"):
        head.imprint_(torch.ones(2, 3), torch.tensor([0, 1]))
