"""The batch-hard triplet loss, alone and beside ArcFace in the real train path."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import first_epoch_loss, train_tiny

from retrieval import checkpoint as ckpt
from retrieval.config import LossConfig
from retrieval.errors import InputError
from retrieval.model.arcface import ArcFaceHead
from retrieval.model.embedder import build_embedding_model
from retrieval.model.triplet import batch_hard_triplet_loss
from retrieval.training.loop import TrainModule


def _unit(*angles_deg: float) -> torch.Tensor:
    rad = torch.tensor(angles_deg, dtype=torch.float64) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], dim=1).float()


def _chord(deg: float) -> float:
    """Euclidean distance of two unit vectors ``deg`` apart."""
    return 2 * math.sin(math.radians(deg) / 2)


def test_value_is_the_hardest_positive_against_the_hardest_negative():
    # class 0 at 0 and 40 degrees, class 1 at 60 and 180: every anchor's pair is its hardest
    x, labels = _unit(0, 40, 60, 180), torch.tensor([0, 0, 1, 1])
    per_anchor = [
        _chord(40) - _chord(60) + 0.3,  # 0: positive 40 deg away, nearest negative 60
        _chord(40) - _chord(20) + 0.3,  # 40: the negative at 60 is 20 away
        _chord(120) - _chord(20) + 0.3,  # 60: its positive is 120 away
        _chord(120) - _chord(140) + 0.3,  # 180: nearest negative at 40 is 140 away
    ]
    expected = sum(max(0.0, v) for v in per_anchor) / 4
    got = batch_hard_triplet_loss(x, labels, margin=0.3)
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(expected, abs=1e-6)


def test_separated_classes_cost_nothing_and_scale_does_not_matter():
    x, labels = _unit(0, 5, 90, 95), torch.tensor([0, 0, 1, 1])
    assert float(batch_hard_triplet_loss(x, labels, margin=0.3)) == 0.0
    # distances are between unit vectors: scaling the embeddings changes nothing
    x, labels = _unit(0, 40, 60, 180), torch.tensor([0, 0, 1, 1])
    scaled = batch_hard_triplet_loss(7 * x, labels)
    assert float(scaled) == pytest.approx(float(batch_hard_triplet_loss(x, labels)))


def test_anchors_without_a_positive_add_nothing_and_backward_still_works():
    x = torch.randn(4, 8, requires_grad=True)
    loss = batch_hard_triplet_loss(x, torch.tensor([0, 1, 2, 3]))  # no positives at all
    loss.backward()
    assert float(loss.detach()) == 0.0 and x.grad is not None
    # one class with a pair among singletons: only its two anchors count
    x2 = _unit(0, 30, 100, 200)
    both = batch_hard_triplet_loss(x2, torch.tensor([0, 0, 1, 2]), margin=1.0)
    # anchor 0 already clears the margin (its hinge is 0); anchor 30 does not
    assert _chord(30) - _chord(100) + 1.0 < 0
    expected = (0.0 + (_chord(30) - _chord(70) + 1.0)) / 2
    assert float(both) == pytest.approx(expected, abs=1e-6)


def test_a_repeated_photo_is_a_positive():
    # the sampler repeats the photos of a class with fewer than K: both copies are one class
    x, labels = _unit(0, 0, 20), torch.tensor([0, 0, 1])
    # anchors 0 and 1: positive at distance 0, negative 20 degrees away; anchor 2 has none
    expected = 0.0 - _chord(20) + 0.5
    got = batch_hard_triplet_loss(x, labels, margin=0.5)
    assert float(got) == pytest.approx(expected, abs=1e-5)


def test_train_module_adds_the_weighted_triplet_term_to_arcface():
    torch.manual_seed(0)
    model = build_embedding_model("test_efficientnet", embedding_dim=16, pretrained="none")
    head = ArcFaceHead(16, 3, scale=30.0, margin_rad=0.3)
    images, labels = torch.randn(6, 3, 48, 48), torch.tensor([0, 0, 1, 1, 2, 2])
    plain = TrainModule(model, head).eval()
    with_triplet = TrainModule(model, head, triplet_weight=2.0, triplet_margin=0.5).eval()
    with torch.no_grad():
        embeddings = model(images)
        arcface = head.loss(embeddings, labels)
        triplet = batch_hard_triplet_loss(embeddings, labels, margin=0.5)
        assert float(plain(images, labels)) == pytest.approx(float(arcface), rel=1e-6)
        assert float(with_triplet(images, labels)) == pytest.approx(
            float(arcface + 2.0 * triplet), rel=1e-6
        )
    assert float(triplet) > 0  # random weights: the term is not trivially zero here


@pytest.mark.parametrize(
    ("weight", "margin"), [(-1.0, 0.3), (1.0, -0.1), (1.0, 2.0)], ids=["weight", "low", "high"]
)
def test_config_refuses_a_negative_weight_or_a_margin_outside_0_2(weight, margin):
    with pytest.raises(InputError, match="triplet"):
        LossConfig(triplet_weight=weight, triplet_margin=margin)


def test_train_py_trains_with_it_and_stores_it(tmp_path):
    _, plain = train_tiny(tmp_path / "plain", epochs=1)
    _, triplet = train_tiny(tmp_path / "triplet", epochs=1, extra=("--triplet_weight", "1"))
    state = ckpt.load_checkpoint(triplet / "checkpoints" / "latest_model.pt")
    assert state["config"]["loss"]["triplet_weight"] == 1.0
    assert state["config"]["loss"]["triplet_margin"] == 0.3
    # runs repeat under one seed (test_seeding.py): the loss differs by the triplet term only
    assert first_epoch_loss(triplet) > first_epoch_loss(plain)
