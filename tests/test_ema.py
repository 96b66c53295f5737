"""EMA of weights: validated and saved as the inference model, raw weights kept for resume."""

from __future__ import annotations

import torch
from conftest import TINY_TRAIN_ARGS, train_tiny

import train
from retrieval import checkpoint as ckpt
from retrieval.training.ema import build_ema


def test_ema_follows_the_update_rule():
    model = torch.nn.Linear(2, 1, bias=False)
    ema = build_ema(model, 0.9)
    ema.update_parameters(model)  # the first update copies the weights
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight += 1.0
    ema.update_parameters(model)
    torch.testing.assert_close(ema.module.weight, 0.9 * start + 0.1 * (start + 1.0))
    assert build_ema(model, 0.0) is None


def test_training_with_ema_saves_average_and_raw_weights_and_resumes(tmp_path):
    data, workdir = train_tiny(tmp_path, epochs=2, extra=("--ema_decay", "0.9"))
    state = ckpt.load_checkpoint(workdir / "checkpoints" / "latest_model.pt")
    assert {"model", "train_model", "ema"} <= set(state)
    assert not torch.equal(state["model"]["neck.weight"], state["train_model"]["neck.weight"])
    assert state["model_hash"] == ckpt.weights_hash(state["model"])
    argv = ["--data", str(data), "--workdir", str(workdir), "--epochs", "3"]
    assert train.main([*argv, "--warmup_epochs", "1", "--ema_decay", "0.9", *TINY_TRAIN_ARGS]) == 0
    assert ckpt.load_checkpoint(workdir / "checkpoints" / "latest_model.pt")["epoch"] == 3
