"""train.py as separate processes: Ctrl-C saves and resumes; torchrun with 2 CPU processes.

These start real interpreters (seconds each), so they are marked slow; they still run in CI.
"""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRAIN_ARGS

REPO = Path(__file__).resolve().parents[1]
TINY = [*TINY_TRAIN_ARGS, "--warmup_epochs", "1"]

pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")


def _log_epochs(workdir: Path) -> list[str]:
    with (workdir / "checkpoints" / "train_log.csv").open() as handle:
        return [row["epoch"] for row in csv.DictReader(handle)]


def _default_sigint() -> None:
    """A shell that starts a job in the background (``cmd &``) makes it ignore SIGINT, and
    Python then never installs its KeyboardInterrupt handler: give the child a real Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_saves_latest_and_the_next_run_resumes(tiny_data, tmp_path):
    workdir = tmp_path / "work"
    argv = [sys.executable, str(REPO / "train.py"), "--data", str(tiny_data)]
    # patience: a seeded run may saturate val at epoch 1 and stop early before the Ctrl-C
    argv += ["--workdir", str(workdir), *TINY, "--patience", "200"]
    proc = subprocess.Popen(
        [*argv, "--epochs", "200", "--fresh"],
        env=_env(),
        preexec_fn=_default_sigint,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    latest = workdir / "checkpoints" / "latest_model.pt"
    deadline = time.monotonic() + 120
    while not latest.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert latest.exists(), proc.communicate()[0]
    time.sleep(0.5)  # somewhere inside a later epoch
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert '"interrupted": true' in out
    state = torch.load(latest, map_location="cpu", weights_only=False)
    done = state["epoch"]
    assert done >= 1
    resumed = subprocess.run(
        [*argv, "--epochs", str(done + 1)], env=_env(), capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {latest} at epoch {done + 1}" in resumed.stdout
    assert _log_epochs(workdir) == [str(e) for e in range(1, done + 2)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_torchrun_two_cpu_processes_trains_with_ddp(tiny_data, tmp_path):
    workdir = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        f"--master_port={_free_port()}", str(REPO / "train.py"),
        "--data", str(tiny_data), "--workdir", str(workdir), "--epochs", "2", "--fresh", *TINY,
        "--head_init", "imprint",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout
    # rank 0 alone imprints; DDP copies its head to rank 1 when it wraps the module
    assert proc.stdout.count("class centres imprinted") == 1
    assert proc.stdout.count('"best_val_recall_at_1"') == 2  # each rank reports
    assert _log_epochs(workdir) == ["1", "2"]  # rank 0 alone wrote the log
    assert (workdir / "checkpoints" / "best_model.pt").is_file()
    assert (workdir / "gallery" / "current.json").is_file()
