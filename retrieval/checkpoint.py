"""Checkpoints that survive crashes and describe themselves (SPEC 3.5-3.6, STYLE rule 13).

A checkpoint holds fp32 weights, optimiser/scheduler/scaler state, progress counters, the
resolved config, the class map, the backbone name, library versions, RNG states and a
fingerprint of the training data, so that it loads with no CLI flags and a resume with other
data is refused instead of silently mixing runs.
"""

from __future__ import annotations

import hashlib
import json
import platform
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from retrieval.config import LEGACY_INPUT_NORM
from retrieval.errors import InputError
from retrieval.io import atomic_path

BEST = "best_model.pt"
LATEST = "latest_model.pt"
FORMAT_VERSION = 1


def periodic_name(epoch: int) -> str:
    """``checkpoint_epoch_N.pt`` (N counted from 1, as the log shows it)."""
    return f"checkpoint_epoch_{epoch}.pt"


def fp32_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the weights with floating tensors in float32 (SPEC 3.5: weights in fp32)."""
    out = {}
    for key, value in module.state_dict().items():
        value = value.detach().cpu()
        out[key] = value.float() if value.is_floating_point() else value.clone()
    return out


def weights_hash(state_dict: dict[str, torch.Tensor]) -> str:
    """Content hash of fp32 weights: names a checkpoint's model (a gallery records it)."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous().reshape(-1)
        digest.update(key.encode() + str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:16]


def data_fingerprint(train_groups: Iterable[str], class_to_idx: dict[str, int]) -> str:
    """Hash of what the model was trained on: resuming on other data must be refused."""
    digest = hashlib.sha256()
    digest.update(json.dumps(sorted(class_to_idx.items())).encode())
    for group in sorted(train_groups):
        digest.update(group.encode() + b"\0")
    return digest.hexdigest()[:16]


def library_versions() -> dict[str, str]:
    import numpy
    import timm

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": numpy.__version__,
    }


def seed_rngs(seed: int) -> None:
    """Seed Python's and torch's generators (CPU and CUDA): head init, augmentation, dropout.

    A fresh run starts from here and a resumed one from ``restore_rng_states``, so two runs
    with the same ``--seed`` draw the same numbers.
    """
    random.seed(seed)
    torch.manual_seed(seed)


def rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_initialized():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """Write a checkpoint so that a crash at any point leaves the old file or the new one."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load one of our checkpoints on CPU, with a clear error for a missing or foreign file."""
    if not path.is_file():
        raise InputError(
            f"checkpoint {path} not found; train first (python train.py) or pass --checkpoint PATH"
        )
    try:
        # Our checkpoints hold RNG states and plain Python objects: they are trusted files
        # this tool wrote itself, so full unpickling is allowed.
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for a corrupt file
        raise InputError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise InputError(
            f"{path} is not a checkpoint written by this tool (format {FORMAT_VERSION}); "
            "use --pretrained PATH to start from foreign weights"
        )
    return state


def check_resumable(
    state: dict[str, Any], *, backbone: str, input_norm: str, fingerprint: str, path: Path
) -> None:
    """Refuse to resume a run on another backbone, input normalisation or data (issue 3 item 7)."""
    if state["backbone"] != backbone:
        raise InputError(
            f"{path} was trained with backbone {state['backbone']!r}, not {backbone!r}; "
            "use --fresh to start over or another --workdir for a separate run"
        )
    stored_norm = state.get("input_norm", LEGACY_INPUT_NORM)
    if stored_norm != input_norm:
        raise InputError(
            f"{path} was trained with --input_norm {stored_norm}, not {input_norm}; resume with "
            f"--input_norm {stored_norm}, or use --fresh to start over"
        )
    if state["data_fingerprint"] != fingerprint:
        raise InputError(
            f"{path} was trained on other data (training groups or classes differ); "
            "use --fresh to start over or another --workdir for a separate run"
        )
