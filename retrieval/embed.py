"""Turning images into embeddings: batched, no grad, autocast on GPU, optional flip TTA.

Shared by validation during training, the gallery build, evaluation and search, so every
stage embeds an image the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from retrieval.data.dataset import ImageDataset
from retrieval.data.records import ImageRecord
from retrieval.data.transforms import to_model_input
from retrieval.device import RuntimePlan, autocast

TTA_MODES = ("none", "flip")


@dataclass
class EmbedTimer:
    """Steady-state throughput of an extraction: images and seconds after the first batch
    (data-loader start-up excluded, so the figure describes the model and pipeline). With a
    single batch there is no steady state, and the whole extraction is timed."""

    images: int = 0
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


@torch.inference_mode()
def embed_batch(
    model: torch.nn.Module, images: torch.Tensor, *, plan: RuntimePlan, tta: str = "none"
) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> (B, D) float32 unit vectors on CPU.

    ``model``: an ``EmbeddingModel``, or any module with the ``input_norm`` of its weights.

    Flip TTA averages the embeddings of the image and its mirror, then re-normalises; it is off
    by default because the left and right flanks of a spotted animal are different patterns.
    """
    device = next(model.parameters()).device
    images = to_model_input(
        images, device=device, channels_last=plan.channels_last, norm=model.input_norm
    )
    with autocast(plan):
        out = model(images).float()
        if tta == "flip":
            out = F.normalize(out + model(torch.flip(images, dims=[3])).float(), dim=1)
    return out.cpu()


def extract_embeddings(
    model: torch.nn.Module,
    records: Sequence[ImageRecord],
    *,
    transform: Callable,
    plan: RuntimePlan,
    batch_size: int = 64,
    tta: str = "none",
    progress: bool = True,
    desc: str = "embedding",
    timer: EmbedTimer | None = None,
) -> np.ndarray:
    """Embed ``records`` in order: (N, D) float32, L2-normalised."""
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {TTA_MODES}, got {tta!r}")
    was_training = model.training
    model.eval()
    loader = DataLoader(
        ImageDataset(records, None, transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=plan.num_workers,
        pin_memory=plan.pin_memory,
        persistent_workers=False,
    )
    chunks = []
    began, started, steady = time.perf_counter(), None, 0
    for images, _ in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
        chunks.append(embed_batch(model, images, plan=plan, tta=tta).numpy())
        if started is None:
            started = time.perf_counter()
        else:
            steady += len(images)
    if timer is not None and started is not None:
        if steady:
            timer.images += steady
            timer.seconds += time.perf_counter() - started
        else:  # a single batch: no steady state to time, so start-up is included
            timer.images += len(records)
            timer.seconds += time.perf_counter() - began
    model.train(was_training)
    if not chunks:
        return np.zeros((0, getattr(model, "embedding_dim", 0)), dtype=np.float32)
    return np.ascontiguousarray(np.concatenate(chunks).astype(np.float32, copy=False))
