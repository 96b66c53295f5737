"""The cone statistic printed after imprinting: the mean cosine between class centres."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pytest import approx

from retrieval.training.imprint import mean_pairwise_cosine


def test_mean_pairwise_cosine_equals_the_mean_of_the_off_diagonal_gram():
    rows = torch.randn(7, 5, generator=torch.Generator().manual_seed(0)) * 3.0  # norms ignored
    unit = F.normalize(rows, dim=1)
    gram = unit @ unit.T
    by_hand = gram[~torch.eye(7, dtype=torch.bool)].mean().item()
    assert mean_pairwise_cosine(rows) == approx(by_hand, abs=1e-6)


def test_mean_pairwise_cosine_of_one_cone_is_near_one_and_of_opposites_minus_one():
    assert mean_pairwise_cosine(torch.tensor([[1.0, 0.01], [1.0, -0.01], [1.0, 0.0]])) > 0.999
    assert mean_pairwise_cosine(torch.tensor([[1.0, 0.0], [-2.0, 0.0]])) == approx(-1.0)
    assert mean_pairwise_cosine(torch.tensor([[1.0, 0.0]])) == 1.0  # no pair: one cone
