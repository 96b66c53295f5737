"""GeM, sub-center ArcFace, dynamic margins, head and warm-up LR through the real train path."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from conftest import TINY_TRAIN_ARGS, first_epoch_loss, train_tiny

import evaluate
import search
import train
from retrieval import checkpoint as ckpt
from retrieval.training import imprint


def test_gem_subcenters_dynamic_margins_train_resume_and_search(tmp_path, capsys):
    options = ("--pooling", "gem", "--subcenters", "2", "--dynamic_margins", "--select_on", "map")
    data, workdir = train_tiny(tmp_path, epochs=2, extra=options)
    state = ckpt.load_checkpoint(workdir / "checkpoints" / "best_model.pt")
    assert state["config"]["train"]["select_on"] == "map"
    with (workdir / "checkpoints" / "train_log.csv").open() as handle:
        val_maps = [float(row["val_map"]) for row in csv.DictReader(handle)]
    assert state["progress"]["best_map"] == max(val_maps)  # best model = best val mAP
    assert state["pooling"] == "gem" and "pool.p" in state["model"]
    assert state["head"]["weight"].shape[0] == 2 * len(state["class_to_idx"])
    assert "class_margins" in state["head"]
    query = next((data / "red").glob("*.jpg"))
    capsys.readouterr()
    assert search.main([str(query), "--workdir", str(workdir), "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["matches"]) == 5
    # resuming with another head configuration is a clean, one-line refusal
    argv = ["--data", str(data), "--workdir", str(workdir), "--epochs", "3", *TINY_TRAIN_ARGS]
    assert train.main([*argv, "--warmup_epochs", "1", "--subcenters", "1"]) == 2
    assert "another model or head configuration" in capsys.readouterr().err


def test_head_lr_mult_trains_the_head_faster_and_refuses_a_mismatched_resume(tmp_path, capsys):
    data, workdir = train_tiny(tmp_path, epochs=2, extra=("--head_lr_mult", "10"))
    state = ckpt.load_checkpoint(workdir / "checkpoints" / "latest_model.pt")
    groups = state["optimizer"]["param_groups"]
    assert len(groups) == 2 and groups[1]["initial_lr"] == 10 * groups[0]["initial_lr"]
    assert state["config"]["train"]["head_lr_mult"] == 10
    argv = ["--data", str(data), "--workdir", str(workdir), "--epochs", "3", *TINY_TRAIN_ARGS]
    capsys.readouterr()
    assert train.main([*argv, "--warmup_epochs", "1", "--head_lr_mult", "1"]) == 2
    assert "resume with --head_lr_mult 10" in capsys.readouterr().err


def test_frozen_stages_leave_the_stem_and_early_stages_as_they_started(tmp_path, capsys):
    from retrieval.config import DataConfig
    from retrieval.model.embedder import backbone_stages, build_embedding_model

    _, workdir = train_tiny(tmp_path, epochs=2, extra=("--frozen_stages", "2"))
    state = ckpt.load_checkpoint(workdir / "checkpoints" / "latest_model.pt")
    assert state["config"]["model"]["frozen_stages"] == 2
    model = build_embedding_model("test_efficientnet", pretrained="none")
    model.load_state_dict(state["model"])
    ckpt.seed_rngs(DataConfig().seed)  # as the trainer seeds: the same random initial weights
    start = build_embedding_model("test_efficientnet", pretrained="none")
    stages = zip(*(backbone_stages(m.backbone, "") for m in (model, start)), strict=True)
    moved = [any(not torch.equal(a, b) for a, b in zip(*pair, strict=True)) for pair in stages]
    assert moved[:3] == [False, False, False]  # stem and stages 1-2 exactly as initialised
    assert any(moved[3:])  # the later stages trained
    data = tmp_path / "data"
    argv = ["--data", str(data), "--workdir", str(tmp_path / "w2"), "--fresh", *TINY_TRAIN_ARGS]
    capsys.readouterr()
    assert train.main([*argv, "--epochs", "1", "--warmup_epochs", "0", "--frozen_stages", "9"]) == 2
    assert "--frozen_stages 9" in capsys.readouterr().err


def test_warmup_lr_mult_runs_the_frozen_warmup_at_its_own_rate(tmp_path):
    _, workdir = train_tiny(tmp_path, epochs=2, extra=("--warmup_lr_mult", "10"))
    with (workdir / "checkpoints" / "train_log.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["phase"] for row in rows] == ["1", "2"]
    assert float(rows[0]["lr"]) == 10 * 1e-3  # the warm-up: only the head trains
    assert float(rows[1]["lr"]) <= 1e-3  # phase 2: the cosine schedule from the base lr
    state = ckpt.load_checkpoint(workdir / "checkpoints" / "latest_model.pt")
    assert state["config"]["train"]["warmup_lr_mult"] == 10


def test_lr_ramp_starts_phase_two_below_the_cosine_rate_and_is_stored(tmp_path):
    _, workdir = train_tiny(tmp_path, epochs=2, extra=("--lr_ramp_epochs", "2"))
    with (workdir / "checkpoints" / "train_log.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert float(rows[0]["lr"]) == 1e-3  # the warm-up is not ramped
    # one phase-2 epoch of a 2-epoch ramp ends at (1 + 1 batch) / 2 of the cosine rate
    assert 0 < float(rows[1]["lr"]) < 0.8e-3
    state = ckpt.load_checkpoint(workdir / "checkpoints" / "latest_model.pt")
    assert state["config"]["train"]["lr_ramp_epochs"] == 2


def test_a_resume_with_another_lr_follows_it(tmp_path, capsys):
    data, workdir = train_tiny(tmp_path, epochs=2)  # --lr 1e-3
    argv = ["--data", str(data), "--workdir", str(workdir), *TINY_TRAIN_ARGS]
    capsys.readouterr()
    assert train.main([*argv, "--epochs", "3", "--warmup_epochs", "1", "--lr", "5e-4"]) == 0
    assert "resuming at --lr 0.0005" in capsys.readouterr().out
    with (workdir / "checkpoints" / "train_log.csv").open() as handle:
        last = list(csv.DictReader(handle))[-1]
    # phase-2 epoch 2 ends 2 epochs into the 10-epoch cosine cycle, from the new base rate
    assert float(last["lr"]) == pytest.approx(5e-4 * (1 + math.cos(math.pi * 2 / 10)) / 2)


def test_random_erasing_changes_the_training_batches_and_is_stored(tmp_path):
    _, plain = train_tiny(tmp_path / "plain", epochs=1)
    _, erased = train_tiny(tmp_path / "erased", epochs=1, extra=("--random_erasing", "1.0"))
    state = ckpt.load_checkpoint(erased / "checkpoints" / "latest_model.pt")
    assert state["config"]["data"]["random_erasing"] == 1.0
    # runs are repeatable under one seed (test_seeding.py), so only the erased pixels differ
    assert first_epoch_loss(plain) != first_epoch_loss(erased)
    assert evaluate.main(["--split", "val", "--workdir", str(erased)]) == 0
    with (erased / "results" / "benchmarks.csv").open() as handle:
        assert "+erase1@" in next(csv.DictReader(handle))["augmentation"]


@pytest.mark.parametrize("head_init", ["imprint", "imprint_centred"])
def test_head_init_imprint_starts_each_centre_at_its_class_and_not_again_on_resume(
    tmp_path, capsys, head_init
):
    data, workdir = train_tiny(tmp_path, epochs=1, extra=("--head_init", head_init))
    out = capsys.readouterr().out
    state = ckpt.load_checkpoint(workdir / "checkpoints" / "latest_model.pt")
    classes = len(state["class_to_idx"])
    assert f"head: {classes} class centres imprinted" in out
    assert ("(centred)" in out) == (head_init == "imprint_centred")
    assert "mean cosine between classes" in out
    assert state["config"]["loss"]["head_init"] == head_init
    argv = ["--data", str(data), "--workdir", str(workdir), "--epochs", "2", *TINY_TRAIN_ARGS]
    assert train.main([*argv, "--warmup_epochs", "1", "--head_init", head_init]) == 0
    resumed = capsys.readouterr().out
    assert "resuming from" in resumed and "imprinted" not in resumed  # the trained head stays


def test_head_init_auto_imprints_below_the_cone_threshold(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(imprint, "AUTO_MAX_COSINE", 1.0)  # every start model is spread enough
    _, workdir = train_tiny(tmp_path, epochs=1, extra=("--head_init", "auto"))
    assert "class centres imprinted" in capsys.readouterr().out
    state = ckpt.load_checkpoint(workdir / "checkpoints" / "latest_model.pt")
    assert state["config"]["loss"]["head_init"] == "auto"


def test_head_init_auto_that_keeps_random_centres_trains_exactly_as_random(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(imprint, "AUTO_MAX_COSINE", -1.0)  # every start model is one cone
    _, auto = train_tiny(tmp_path / "auto", epochs=2, extra=("--head_init", "auto"))
    out = capsys.readouterr().out
    assert "random class centres kept (--head_init auto)" in out and "centres imprinted" not in out
    _, random = train_tiny(tmp_path / "random", epochs=2, extra=("--head_init", "random"))
    kept, plain = (
        ckpt.load_checkpoint(w / "checkpoints" / "latest_model.pt") for w in (auto, random)
    )
    for part in ("model", "head"):
        assert kept[part].keys() == plain[part].keys()
        for name, tensor in plain[part].items():
            assert torch.equal(kept[part][name], tensor), f"{part}.{name} differs"
