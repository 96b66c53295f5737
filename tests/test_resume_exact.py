"""Ctrl-C then resume is the run it claims to be (issue 38 item 2): a run interrupted by a real
SIGINT mid-epoch and resumed ends with the same weights, to the last bit, as one that was
never interrupted, and its log has one row per epoch.

The interrupted run is ``train.py`` in a child process that sends itself SIGINT after a chosen
batch, so the signal lands at the same point every time (a timer from outside could land
before the epoch starts on a fast machine).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CLASS_COLOURS, TINY_GROUPS_PER_CLASS, TINY_TRAIN_ARGS, make_image

import train

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 4

# Runs train.main in this process after making the epoch ``argv[1]`` (0-based) send SIGINT to
# its own process once its first batch has been trained on.
INTERRUPTER = """
import os, signal, sys
import retrieval.training.trainer as trainer

stop_epoch, real = int(sys.argv[1]), trainer.train_one_epoch
# a job started in the background (cmd &) ignores SIGINT: restore Ctrl-C's KeyboardInterrupt
signal.signal(signal.SIGINT, signal.default_int_handler)

def interrupted(batches, epoch):
    for number, batch in enumerate(batches):
        if epoch == stop_epoch and number == 1:
            os.kill(os.getpid(), signal.SIGINT)
        yield batch

def train_one_epoch(module, batches, *, epoch, **kwargs):
    return real(module, interrupted(batches, epoch), epoch=epoch, **kwargs)

trainer.train_one_epoch = train_one_epoch
import train
sys.exit(train.main(sys.argv[2:]))
"""


def make_data(root: Path) -> Path:
    data = root / "data"
    for c, (name, colour) in enumerate(sorted(CLASS_COLOURS.items())):
        for j in range(TINY_GROUPS_PER_CLASS[c]):
            make_image(data / name / f"{name}-g{j}_1.jpg", seed=10 * c + j, colour=colour)
    return data


def argv(data: Path, workdir: Path) -> list[str]:
    return [
        "--data", str(data), "--workdir", str(workdir), "--epochs", str(EPOCHS),
        "--warmup_epochs", "1", "--device", "cpu", "--eval_size", "train", *TINY_TRAIN_ARGS,
    ]  # fmt: skip


def log_rows(workdir: Path) -> list[dict[str, str]]:
    path = workdir / "checkpoints" / "train_log.csv"
    if not path.exists():
        return []
    with path.open() as handle:
        return list(csv.DictReader(handle))


def weights(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    state = torch.load(path, map_location="cpu", weights_only=False)
    return {key: state[key] for key in ("model", "head")}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("whole")
    data = make_data(root)
    assert train.main([*argv(data, root / "work"), "--fresh"]) == 0
    return data, root / "work"


@pytest.mark.parametrize("stop_epoch", [0, 2], ids=["in-first-epoch", "in-third-epoch"])
def test_sigint_mid_epoch_then_resume_gives_the_uninterrupted_weights(
    uninterrupted, tmp_path, stop_epoch
):
    data, whole = uninterrupted
    workdir = tmp_path / "work"
    child = subprocess.run(
        [sys.executable, "-c", INTERRUPTER, str(stop_epoch), *argv(data, workdir), "--fresh"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=600,
    )
    assert child.returncode == 130, child.stderr[-2000:]
    kept = f"the run resumes from the end of epoch {stop_epoch}"
    if stop_epoch == 0:
        kept = "nothing saved; the next run starts afresh"
    assert f"interrupted in epoch {stop_epoch + 1}: {kept}" in child.stdout
    assert len(log_rows(workdir)) == stop_epoch
    assert train.main(argv(data, workdir)) == 0
    for name in ("latest_model.pt", "best_model.pt"):
        resumed, reference = (
            weights(workdir / "checkpoints" / name),
            weights(whole / "checkpoints" / name),
        )
        for part in ("model", "head"):
            assert resumed[part].keys() == reference[part].keys()
            for key, tensor in reference[part].items():
                assert torch.equal(resumed[part][key], tensor), f"{name} {part}.{key} differs"
    rows, reference_rows = log_rows(workdir), log_rows(whole)
    assert [r["epoch"] for r in rows] == [str(e) for e in range(1, EPOCHS + 1)]
    assert [r["loss"] for r in rows] == [r["loss"] for r in reference_rows]
