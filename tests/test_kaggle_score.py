"""Identity-balanced mAP of a pairs submission, checked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.errors import InputError
from retrieval.kaggle_score import holdout_pairs, identity_balanced_map


def test_holdout_pairs_are_all_ordered_distinct_pairs():
    frame = holdout_pairs(["a", "b", "c"])
    assert len(frame) == 6 and list(frame.columns) == ["row_id", "query_image", "gallery_image"]
    assert not (frame["query_image"] == frame["gallery_image"]).any()


def test_identity_balanced_map_by_hand():
    labels = {"a1": "A", "a2": "A", "a3": "A", "b1": "B", "b2": "B"}
    pairs = holdout_pairs(sorted(labels))
    sim = {frozenset(p): 0.0 for p in zip(pairs.query_image, pairs.gallery_image, strict=True)}
    # a1 ranks a2 first, b1 second, a3 third: AP = (1/1 + 2/3) / 2
    sim[frozenset(("a1", "a2"))] = 0.9
    sim[frozenset(("a1", "b1"))] = 0.8
    sim[frozenset(("a1", "a3"))] = 0.7
    sim[frozenset(("b1", "b2"))] = 0.95  # b1 and b2 find each other first: AP 1
    sim[frozenset(("a2", "a3"))] = 0.85
    scores = np.array(
        [sim[frozenset(p)] for p in zip(pairs.query_image, pairs.gallery_image, strict=True)]
    )
    ib_map, per_identity = identity_balanced_map(pairs, scores, labels)
    assert per_identity["B"] == pytest.approx(1.0)
    # a2: a1 (0.9) then a3 (0.85): AP 1; a3: a2 (0.85), then a1 (0.7): AP 1
    assert per_identity["A"] == pytest.approx(((1 + 2 / 3) / 2 + 1 + 1) / 3)
    assert ib_map == pytest.approx((per_identity["A"] + 1.0) / 2)


def test_errors_name_the_problem():
    pairs = holdout_pairs(["x", "y"])
    with pytest.raises(InputError, match="similarities"):
        identity_balanced_map(pairs, np.zeros(1), {"x": "X", "y": "Y"})
    with pytest.raises(InputError, match="no label"):
        identity_balanced_map(pairs, np.zeros(2), {"x": "X"})
    with pytest.raises(InputError, match="nothing to score"):
        identity_balanced_map(pairs, np.zeros(2), {"x": "X", "y": "Y"})
