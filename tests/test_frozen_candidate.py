"""The frozen backbone is a candidate model (issue 35 item 8): a run that does not beat it on
val serves it, says so, and keeps the trained best; a resume trains on from the trained best.

A tiny timm model starts from a weights file (``--pretrained PATH``), so the frozen candidate
is real and the comparison runs; which side wins on toy data is not the point: the test sets
the trained side's val figures to make each branch happen, then checks what the workdir serves.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from conftest import TINY_TRAIN_ARGS, train_tiny

import evaluate
import search
import train
from retrieval import checkpoint as ckpt
from retrieval.config import RunConfig
from retrieval.export import export_onnx
from retrieval.inference import load_inference_model
from retrieval.training.frozen_candidate import (
    FROZEN,
    TRAINED,
    choose_served_model,
    frozen_model,
    restore_trained_best,
)
from retrieval.training.run import make_plan, prepare
from retrieval.training.selection import Progress


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path, str]:
    """A 3-epoch tiny run from a weights file; returns (data, workdir, printed output)."""
    root = tmp_path_factory.mktemp("frozen")
    weights = root / "start.pt"
    torch.manual_seed(0)
    torch.save(timm.create_model("test_efficientnet", num_classes=0).state_dict(), weights)
    data, workdir = train_tiny(root, extra=("--pretrained", str(weights)))
    return data, workdir, str(weights)


def _cfg(workdir: Path) -> RunConfig:
    return RunConfig.from_dict(json.loads((workdir / "checkpoints" / "config.json").read_text()))


def _choose(workdir: Path, recall: float, map_: float):
    """The end-of-run choice again, against a trained side with these val figures."""
    restore_trained_best(workdir / "checkpoints", fresh=False)  # as a run does first
    cfg = _cfg(workdir)
    plan = make_plan(cfg)
    prepared = prepare(cfg, progress=False)
    progress = Progress(best_recall_at_1=recall, best_map=map_)
    return choose_served_model(cfg, prepared, plan, progress, workdir / "checkpoints")


def test_a_run_compares_itself_with_its_frozen_backbone(run):
    _, workdir, _ = run
    served = torch.load(workdir / "checkpoints" / ckpt.BEST, weights_only=False)
    trained_file = workdir / "checkpoints" / TRAINED
    # Whichever side won, the files say the same thing.
    assert (served.get("served") == FROZEN) == trained_file.exists()


def test_frozen_backbone_served_when_training_lost(run, capsys):
    data, workdir, _ = run
    latest = torch.load(workdir / "checkpoints" / "latest_model.pt", weights_only=False)
    choice = _choose(workdir, recall=0.0, map_=0.0)  # a trained side nothing can be worse than
    assert choice is not None and choice.served == FROZEN
    assert "did not beat the frozen backbone" in choice.describe()
    best = workdir / "checkpoints" / ckpt.BEST
    state = torch.load(best, weights_only=False)
    assert state["served"] == FROZEN and state["neck"] is False
    assert not any(key.startswith("neck.") for key in state["model"])
    kept = torch.load(workdir / "checkpoints" / TRAINED, weights_only=False)
    assert "neck.weight" in kept["model"] and "optimizer" in kept
    assert kept["config"] == latest["config"]

    # The frozen checkpoint's embeddings are the backbone's own features, L2-normalised.
    loaded = load_inference_model(best, make_plan(_cfg(workdir)))
    reference = frozen_model(_cfg(workdir))
    images = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(reference.backbone(images), dim=1)
        assert torch.allclose(loaded.model(images), expected, atol=1e-6)
    assert loaded.served == FROZEN and loaded.model.embedding_dim == expected.shape[1]

    # evaluate and search serve it (the gallery is rebuilt for the new checkpoint) and say so.
    capsys.readouterr()
    argv = ["--workdir", str(workdir), "--rebuild_gallery"]
    assert evaluate.main(["--split", "test", *argv]) == 0
    assert "frozen backbone" in capsys.readouterr().out
    metrics = json.loads((workdir / "results" / "test_metrics.json").read_text())
    assert metrics["model"] == FROZEN
    photo = next((data).rglob("*.jpg"))
    assert search.main([str(photo), "--workdir", str(workdir), "--format", "json"]) == 0
    # ONNX export works without a neck: the embedding is the backbone's width.
    result = export_onnx(best, workdir / "model.onnx")
    assert result.sidecar["embedding_dim"] == expected.shape[1]


def test_a_resume_trains_on_from_the_trained_best(run, capsys):
    data, workdir, weights = run
    if not (workdir / "checkpoints" / TRAINED).exists():
        _choose(workdir, recall=0.0, map_=0.0)
    capsys.readouterr()
    argv = ["--data", str(data), "--workdir", str(workdir), "--epochs", "4"]
    assert train.main([*argv, *TINY_TRAIN_ARGS, "--pretrained", weights]) == 0
    out = capsys.readouterr().out
    assert "resuming from" in out and "frozen backbone" in out
    best = torch.load(workdir / "checkpoints" / ckpt.BEST, weights_only=False)
    # The comparison ran again on the trained best: either it won, or it is kept again.
    assert (best.get("served") == FROZEN) == (workdir / "checkpoints" / TRAINED).exists()
    if best.get("served") != FROZEN:
        assert "neck.weight" in best["model"]


def test_trained_model_kept_when_it_wins(run):
    _, workdir, _ = run
    choice = _choose(workdir, recall=1.0, map_=1.0)  # nothing beats a perfect trained side
    assert choice is not None and choice.served == "trained"
    assert "the trained model is served" in choice.describe()


def test_no_comparison_without_pretrained_weights(tmp_path, capsys):
    _, workdir = train_tiny(tmp_path, epochs=2)
    assert "frozen backbone" not in capsys.readouterr().out
    assert not (workdir / "checkpoints" / TRAINED).exists()
