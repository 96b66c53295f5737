"""Gallery lookups that must skip removed items: the live classes and vectors by path."""

from __future__ import annotations

import numpy as np

from retrieval.serving.gallery import Gallery


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, 8)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_removed_items_leave_the_live_classes_and_the_path_lookup():
    rng = np.random.default_rng(0)
    built = _unit(rng, 4)
    gallery = Gallery.build(
        built,
        np.array([0, 0, 1, 1]),
        ["a0.jpg", "a1.jpg", "b0.jpg", "b1.jpg"],
        class_names=["a", "b"],
        fingerprint="test",
        use_gpu=False,
    )
    enrolled = _unit(rng, 1)
    gallery.add_items(enrolled, ["c"], ["c0.jpg"])  # stored after the build rows
    assert gallery.remove_class("a") == 2  # storage order no longer matches item IDs

    assert gallery.live_classes() == {"b", "c"}
    found = gallery.vectors_by_path({"a0.jpg", "b1.jpg", "c0.jpg", "elsewhere.jpg"})
    assert set(found) == {"b1.jpg", "c0.jpg"}
    np.testing.assert_allclose(found["b1.jpg"], built[3], atol=1e-6)
    np.testing.assert_allclose(found["c0.jpg"], enrolled[0], atol=1e-6)
    assert gallery.vectors_by_path({"a1.jpg"}) == {}
