"""``--seed`` makes a training run repeatable: head init, augmentation and dropout included."""

from __future__ import annotations

import csv

from conftest import train_tiny

from retrieval import checkpoint as ckpt


def _run(root, seed: str) -> tuple[list[str], str]:
    _, workdir = train_tiny(root, epochs=2, extra=("--seed", seed, "--num_workers", "1"))
    with (workdir / "checkpoints" / "train_log.csv").open() as handle:
        losses = [row["loss"] for row in csv.DictReader(handle)]
    state = ckpt.load_checkpoint(workdir / "checkpoints" / "latest_model.pt")
    return losses, ckpt.weights_hash(state["model"])


def test_same_seed_same_run_other_seed_other_run(tmp_path):
    first, again = _run(tmp_path / "a", "7"), _run(tmp_path / "b", "7")
    assert first == again  # losses of every epoch and the final weights
    assert _run(tmp_path / "c", "8")[1] != first[1]
