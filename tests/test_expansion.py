"""Query expansion for photo searches (``--rerank qe``): chosen on val, stored with the
gallery, kept in step with enrollment, and used by evaluate.py and search.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image, train_tiny

import evaluate
import search
from retrieval.calibration.gallery_policy import choose_expansion
from retrieval.calibration.policy import choose_policy
from retrieval.errors import InputError
from retrieval.metrics import evaluate_retrieval
from retrieval.neighbours import alpha_query_expansion, database_augmentation, top_k_cosine
from retrieval.serving.decide import DecisionPolicy
from retrieval.serving.evidence import array_evidence
from retrieval.serving.expansion import GalleryExpansion
from retrieval.serving.gallery import Gallery


def _split(seed: int, n_ids: int = 10, per_id: int = 4, dim: int = 16):
    """Gallery photos around one centre per identity, and noisier queries of them."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, dim))
    g_labels = np.repeat(np.arange(n_ids), per_id)
    gallery = centres[g_labels] + rng.normal(size=(len(g_labels), dim))
    q_labels = np.repeat(np.arange(n_ids), 2)
    queries = centres[q_labels] + 1.3 * rng.normal(size=(len(q_labels), dim))

    def unit(x):
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return unit(queries), q_labels, unit(gallery), g_labels


def _gallery(vectors: np.ndarray, labels: np.ndarray) -> Gallery:
    return Gallery.build(
        vectors,
        labels,
        [f"g{i}.jpg" for i in range(len(labels))],
        class_names=[f"id{c}" for c in range(labels.max() + 1)],
        fingerprint="test",
        use_gpu=False,
    )


def test_choice_is_the_tuned_grid_point_with_a_policy_from_the_expanded_search():
    q, q_labels, g, g_labels = _split(0)
    chosen = choose_expansion(q, q_labels, g, g_labels, 10)
    assert chosen.k > 0  # four photos per identity: averaging with them helps
    assert chosen.val_map > chosen.val_map_plain
    assert chosen.val_map_plain == pytest.approx(evaluate_retrieval(q, q_labels, g, g_labels).map)

    dba = database_augmentation(g, k=chosen.k, alpha=chosen.alpha)
    eq = alpha_query_expansion(q, dba, k=chosen.k, alpha=chosen.alpha)
    assert chosen.val_map == pytest.approx(evaluate_retrieval(eq, q_labels, dba, g_labels).map)
    by_hand = choose_policy(array_evidence(eq, dba, g_labels, 10, need_means=True), q_labels)
    assert chosen.policy == by_hand
    assert GalleryExpansion.from_dict(json.loads(json.dumps(chosen.to_dict()))) == chosen


def test_expanded_search_is_dba_plus_qe_and_keeps_item_ids():
    q, _, g, g_labels = _split(1)
    gallery = _gallery(g[:30], g_labels[:30])
    extra = gallery.add_items(g[30:], [f"id{c}" for c in g_labels[30:]], ["x"] * 10)
    gallery.remove_class("id0")  # storage order no longer matches the item IDs
    expansion = GalleryExpansion(k=2, alpha=3.0)
    gallery.set_expansion(expansion)

    hits = gallery.search(q, 5, expand=True)
    ids = gallery.index.ids()
    dba = database_augmentation(gallery.index.reconstruct_all(), k=2, alpha=3.0)
    scores, rows = top_k_cosine(alpha_query_expansion(q, dba, k=2, alpha=3.0), dba, 5)
    np.testing.assert_allclose(hits.result.scores, scores, atol=1e-5)
    np.testing.assert_array_equal(hits.result.indices, ids[rows])
    np.testing.assert_array_equal(hits.labels, gallery.labels_by_id[ids[rows]])
    assert set(extra) <= set(ids)
    assert gallery.policy_for(expand=True) == DecisionPolicy()  # none chosen: the defaults
    assert gallery.history[-1]["event"] == "expansion"


def test_saved_expansion_round_trips_and_follows_the_gallery(tmp_path: Path):
    q, _, g, g_labels = _split(2)
    gallery = _gallery(g, g_labels)
    with pytest.raises(InputError, match="--rerank qe"):
        gallery.search(q, 3, expand=True)
    gallery.set_expansion(GalleryExpansion(k=3, alpha=1.0, val_map=0.9, val_map_plain=0.8))
    before = gallery.search(q, 5, expand=True)
    gallery.save(tmp_path)
    loaded = Gallery.load(tmp_path)
    assert loaded.expansion == gallery.expansion
    after = loaded.search(q, 5, expand=True)
    np.testing.assert_array_equal(after.result.indices, before.result.indices)

    loaded.add_items(q[:1], ["id9"], ["new.jpg"])  # the new photo joins its neighbours' DBA
    loaded.save(tmp_path)
    grown = Gallery.load(tmp_path)
    assert grown.augmented_index().ntotal == grown.size == len(g) + 1
    dba = database_augmentation(grown.index.reconstruct_all(), k=3, alpha=1.0)
    np.testing.assert_allclose(grown.augmented_index().reconstruct_all(), dba, atol=1e-6)

    for name in grown.live_classes():
        grown.remove_class(name)
    grown.save(tmp_path)  # an emptied gallery saves, and finds nothing
    assert (Gallery.load(tmp_path).search(q, 3, expand=True).labels == -1).all()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    return train_tiny(tmp_path_factory.mktemp("expansion"))


def test_evaluate_and_search_choose_it_once_and_share_it(trained, tmp_path, capsys):
    data, workdir = trained
    wd = ["--workdir", str(workdir)]
    assert evaluate.main(["--split", "test", "--rerank", "qe", "--figures=false", *wd]) == 0
    out = capsys.readouterr().out
    assert "--rerank qe:" in out and "chosen on val" in out
    metrics = json.loads((workdir / "results" / "test_metrics.json").read_text())
    stored = Gallery.load(workdir / "gallery").expansion
    assert stored is not None and metrics["query_expansion"] == stored.to_dict()
    assert metrics["decision_policy"] == stored.policy.to_dict()  # the expanded search's own
    assert 0.0 <= metrics["recall_at_1"] <= 1.0

    query = next((data / "red").glob("*.jpg"))
    assert search.main([str(query), "--rerank", "qe", "--format", "json", *wd]) == 0
    captured = capsys.readouterr()
    answer = json.loads(captured.out)[0]
    assert answer["matches"][0]["class"] == "red"
    assert "chosen on val" in captured.err
    history = Gallery.load(workdir / "gallery").history
    assert [e["event"] for e in history].count("expansion") == 1  # search reused it

    newcomer = tmp_path / "enroll" / "violet" / "violet-g0_1.jpg"
    make_image(newcomer, seed=901, colour=(140, 0, 255))
    assert search.main(["--enroll", str(tmp_path / "enroll"), *wd]) == 0
    grown = Gallery.load(workdir / "gallery")
    assert grown.augmented_index().ntotal == grown.size  # DBA'd again with the newcomer
    capsys.readouterr()
    assert search.main([str(newcomer), "--rerank", "qe", "--format", "json", *wd]) == 0
    assert json.loads(capsys.readouterr().out)[0]["matches"][0]["class"] == "violet"


def test_k_reciprocal_is_refused_for_photo_searches(trained, capsys):
    data, workdir = trained
    query = next((data / "red").glob("*.jpg"))
    assert search.main([str(query), "--rerank", "kr", "--workdir", str(workdir)]) == 2
    assert "photo searches take --rerank qe" in capsys.readouterr().err
