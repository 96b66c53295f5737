"""The ablation benchmark's peer (bench/peer.py): a real pytorch-metric-learning fine-tune.

Tiny run: lite0 at random init, 48 px, the tiny colour data. What matters for the comparison
is that the peer really trains, keeps BatchNorm statistics frozen, and is scored through the
same path as our own cells.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

pytest.importorskip("pytorch_metric_learning")

from ablation_data import CellRecords
from ablation_score import score_cell
from peer import PEER_BACKBONE, PEER_FILE, PeerConfig, load_peer, train_peer

from retrieval.data.prepare import prepare_data
from retrieval.eval_size import candidate_sizes
from retrieval.input_norm import resolve_input_norm
from retrieval.model.pretrained import create_backbone
from retrieval.rerank_tune import GRIDS

TINY = PeerConfig(
    epochs=2, lr=1e-3, image_size=48, batch_size=8, per_class=2, device="cpu", pretrained="none"
)


@pytest.fixture
def peer_cell(tiny_data, tmp_path):
    workdir = tmp_path / "cell"
    prepared = prepare_data(tiny_data, workdir, min_size=32, seed=1, progress=False)
    train_peer(prepared, workdir, TINY)
    return workdir, prepared


def test_peer_trains_its_weights_with_batchnorm_statistics_frozen(peer_cell):
    workdir, _ = peer_cell
    trained, norm, seconds = load_peer(workdir / PEER_FILE)
    assert norm == resolve_input_norm("backbone", PEER_BACKBONE)
    torch.manual_seed(TINY.seed)  # train_peer seeds before creating the backbone
    initial, _ = create_backbone(PEER_BACKBONE, "none")
    before, after = initial.state_dict(), trained.state_dict()
    stats = [k for k in after if k.endswith(("running_mean", "running_var"))]
    weights = [k for k in after if after[k].is_floating_point() and k not in stats]
    assert stats and seconds > 0
    assert all(torch.equal(before[k], after[k]) for k in stats)  # eval-mode BatchNorm
    assert any(not torch.equal(before[k], after[k]) for k in weights)


def test_peer_keeps_the_backbone_it_trained(tiny_data, tmp_path):
    prepared = prepare_data(tiny_data, tmp_path, min_size=32, seed=1, progress=False)
    path = train_peer(prepared, tmp_path, replace(TINY, epochs=1, backbone="test_efficientnet"))
    trained, _, _ = load_peer(path)
    assert trained.default_cfg["architecture"] == "test_efficientnet"


def test_peer_is_scored_on_the_same_split_as_our_cells(peer_cell):
    workdir, prepared = peer_cell
    records = CellRecords(prepared, ())
    result = score_cell(
        workdir / PEER_FILE, records, mode="pairs", kind="peer", image_size=48, device="cpu"
    )
    assert 0.0 < result["metrics"]["test_map"] <= 1.0
    assert {"test_map_qe", "test_map_kr", "test_map_tta"} <= set(result["metrics"])
    assert result["minutes_to_best"] >= 0


def test_gallery_mode_scores_recall_with_and_without_expansion_chosen_on_val(peer_cell):
    workdir, prepared = peer_cell
    records = CellRecords(prepared, tuple(prepared.test))  # the test photos stand in as strangers
    result = score_cell(
        workdir / PEER_FILE, records, mode="gallery", kind="peer", image_size=48, device="cpu"
    )
    metrics = result["metrics"]
    for key in ("test_r1", "test_r1_qe", "test_map", "test_map_qe", "test_r1_tta_qe"):
        assert 0.0 <= metrics[key] <= 1.0
    chosen = result["params"]["test_r1_qe"]
    assert chosen["k"] in {0, *(p["k"] for p in GRIDS["dba"])}
    if chosen["k"] == 0:  # val chose no expansion: the same ranking as plain cosine
        assert (metrics["test_r1_qe"], metrics["test_map_qe"]) == (
            metrics["test_r1"],
            metrics["test_map"],
        )


def test_models_without_a_stored_size_choose_theirs_on_val_as_train_py_does(peer_cell):
    workdir, prepared = peer_cell
    records = CellRecords(prepared, ())
    common = dict(mode="pairs", kind="peer", image_size=48, device="cpu")
    chosen = score_cell(workdir / PEER_FILE, records, eval_size="auto", **common)
    fixed = score_cell(workdir / PEER_FILE, records, eval_size="train", **common)
    assert chosen["eval_size"] in candidate_sizes(48)
    assert fixed["eval_size"] == 48
