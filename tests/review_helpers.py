"""Shared by the review page's tests: one tiny trained workdir, copied for each test."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import CLASS_COLOURS, make_image, train_tiny

from retrieval.review.settings import ReviewSettings
from retrieval.workspace import Workspace, open_workspace


def trained_workdir(root: Path) -> Path:
    """Train the tiny colours model once (3 epochs, random-init test_efficientnet)."""
    _, workdir = train_tiny(root)
    return workdir


def fresh_copy(workdir: Path, tmp_path: Path) -> Path:
    """A private copy of the trained workdir, so a test's corrections stay its own."""
    copy = tmp_path / "work"
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns(".lock"))
    return copy


def open_copy(workdir: Path) -> Workspace:
    return open_workspace(
        workdir, workdir / "checkpoints" / "best_model.pt", device="cpu", progress=False
    )


def colour_photo(path: Path, name: str, seed: int) -> Path:
    """A new photo of the tiny data set's individual ``name`` (a colour), never trained on."""
    return make_image(path, seed=seed, colour=CLASS_COLOURS[name])


def settings(**changes) -> ReviewSettings:
    return ReviewSettings(**{"local_match": "off", **changes})
