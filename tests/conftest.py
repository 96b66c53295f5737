"""Shared test fixtures: tiny synthetic images and data folders, and the optional real data.

Everything here is generated in ``tmp_path`` in milliseconds; nothing is downloaded.
"""

import os

os.environ.setdefault("KMP_DUPLICATE_LIB_OK", "TRUE")  # faiss + torch each bring an OpenMP

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Well-separated colours, one per tiny_data class, so even a random-init model can tell them apart.
CLASS_COLOURS = {
    "amber": (230, 160, 20),
    "blue": (30, 60, 220),
    "green": (40, 190, 60),
    "grey": (128, 128, 128),
    "magenta": (210, 40, 200),
    "red": (220, 30, 30),
}
TINY_GROUPS_PER_CLASS = (3, 4, 5, 3, 4, 5)  # by sorted class name


def make_image(
    path: Path,
    size: tuple[int, int] = (64, 64),
    mode: str = "RGB",
    seed: int = 0,
    colour: tuple[int, int, int] | None = None,
) -> Path:
    """Save a small patterned image (stripes + noise over ``colour``) and return its path.

    ``size`` is (width, height). ``mode`` is any Pillow mode the file format can store; for
    "RGBA" and "LA" the left quarter is fully transparent and the rest opaque. The format
    follows the file extension.
    """
    rng = np.random.default_rng(seed)
    w, h = size
    base = np.asarray(colour if colour is not None else rng.integers(0, 256, 3), dtype=float)
    yy, xx = np.mgrid[0:h, 0:w]
    stripes = (((xx + yy * (seed % 3)) // 8) % 2)[..., None] * 40.0 - 20.0
    arr = np.clip(base + stripes + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(arr)
    if mode in ("RGBA", "LA"):
        alpha = np.full((h, w), 255, dtype=np.uint8)
        alpha[:, : w // 4] = 0
        im = im.convert(mode[:-1])
        im.putalpha(Image.fromarray(alpha))
    elif mode != "RGB":
        im = im.convert(mode)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    """``tmp_path/data/{class}/{ID}_{seq}.{jpg,png}``: 6 classes, 3-5 groups, 1-2 images each.

    64x64 RGB; even groups are JPEG, odd groups PNG; group IDs are ``{class}-g{j}``.
    """
    root = tmp_path / "data"
    for c, (name, colour) in enumerate(sorted(CLASS_COLOURS.items())):
        for j in range(TINY_GROUPS_PER_CLASS[c]):
            ext = "jpg" if j % 2 == 0 else "png"
            for k in range(1 + j % 2):
                seed = 100 * c + 10 * j + k
                make_image(root / name / f"{name}-g{j}_{k + 1}.{ext}", seed=seed, colour=colour)
    return root


@pytest.fixture
def shared_data() -> Path:
    """The real data sets beside the repo (``../shared/data``); skips the test when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


# A tiny training run shared by the CLI tests: timm's test_efficientnet, random init, 48 px.
TINY_TRAIN_ARGS = [
    "--backbone", "test_efficientnet", "--pretrained", "none", "--image_size", "48",
    "--min_size", "32", "--batch_p", "4", "--batch_k", "2", "--num_workers", "0",
    "--eval_batch_size", "16", "--lr", "1e-3",
]  # fmt: skip


def first_epoch_loss(workdir: Path) -> float:
    """The training loss of a run's first epoch, from its train_log.csv."""
    import csv

    with (workdir / "checkpoints" / "train_log.csv").open() as handle:
        return float(next(csv.DictReader(handle))["loss"])


def train_tiny(root: Path, *, epochs: int = 3, extra: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """Train on one-image groups of the tiny colours; returns (data folder, workdir)."""
    import train

    data = root / "data"
    for c, (name, colour) in enumerate(sorted(CLASS_COLOURS.items())):
        for j in range(TINY_GROUPS_PER_CLASS[c]):
            make_image(data / name / f"{name}-g{j}_1.jpg", seed=10 * c + j, colour=colour)
    workdir = root / "work"
    argv = ["--data", str(data), "--workdir", str(workdir), "--epochs", str(epochs)]
    assert train.main([*argv, "--warmup_epochs", "1", "--fresh", *TINY_TRAIN_ARGS, *extra]) == 0
    return data, workdir
