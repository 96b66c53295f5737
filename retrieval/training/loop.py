"""One training epoch: mixed precision, gradient accumulation, progress and throughput."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from retrieval.data.transforms import to_model_input
from retrieval.device import RuntimePlan, autocast
from retrieval.input_norm import InputNorm
from retrieval.model.arcface import ArcFaceHead
from retrieval.model.embedder import EmbeddingModel
from retrieval.model.triplet import batch_hard_triplet_loss
from retrieval.training.schedule import LRSchedule


class TrainModule(torch.nn.Module):
    """Embedding model + ArcFace head as one module, so DDP and torch.compile see one graph.

    ``triplet_weight`` > 0 adds that many times a batch-hard triplet loss on the same
    embeddings (``retrieval.model.triplet``) to the ArcFace loss.
    """

    def __init__(
        self,
        model: EmbeddingModel,
        head: ArcFaceHead,
        *,
        triplet_weight: float = 0.0,
        triplet_margin: float = 0.3,
    ):
        super().__init__()
        self.model = model
        self.head = head
        self.triplet_weight = triplet_weight
        self.triplet_margin = triplet_margin

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean loss of a batch; logits and distances are float32."""
        embeddings = self.model(images)
        loss = self.head.loss(embeddings, labels)
        if self.triplet_weight > 0:
            triplet = batch_hard_triplet_loss(embeddings, labels, margin=self.triplet_margin)
            loss = loss + self.triplet_weight * triplet
        return loss


PROGRESS_EVERY = 10


def _show_progress(bar, loss: float, optimizer, images_timed: int, started, epoch: int, i: int):
    if not math.isfinite(loss):
        raise FloatingPointError(f"loss became {loss} in epoch {epoch + 1}, batch {i}")
    rate = images_timed / max(time.perf_counter() - started, 1e-9) if images_timed else 0.0
    lr = optimizer.param_groups[0]["lr"]
    bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", img_s=f"{rate:.0f}")


@dataclass(frozen=True)
class EpochStats:
    loss: float
    images_per_s: float
    lr: float
    steps: int


@dataclass(frozen=True)
class StepSettings:
    """What one epoch needs to know about the hardware and the schedule."""

    plan: RuntimePlan
    accum_steps: int
    device: torch.device
    input_norm: InputNorm  # the model's pixel normalisation
    progress: bool = True
    max_batches: int | None = None  # a cap for benchmarks and smoke tests
    after_step: Callable[[], None] | None = None  # e.g. the EMA update, after each optimiser step


def train_one_epoch(
    module: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    schedule: LRSchedule,
    epoch: int,
    settings: StepSettings,
) -> EpochStats:
    """Train over ``batches``; the optimiser steps every ``accum_steps`` micro-batches.

    Effective batch = P x K x accum_steps. Throughput counts images from the first batch's end,
    so start-up (worker spawn, cudnn autotuning) does not dilute the figure.
    """
    plan, accum = settings.plan, settings.accum_steps
    try:
        total: int | None = len(batches)  # type: ignore[arg-type]
    except TypeError:  # an endless stream, or a generator
        total = None
    if settings.max_batches is not None:
        total = min(total or settings.max_batches, settings.max_batches)
    module.train()
    schedule.start_epoch(epoch, total)
    optimizer.zero_grad(set_to_none=True)
    loss_sum = torch.zeros((), dtype=torch.float64, device=settings.device)
    seen, steps, images_timed, started = 0, 0, 0, None
    if settings.max_batches is not None:
        # islice, not break: no extra batch is pulled, and a shared iterator stays open
        batches = itertools.islice(batches, settings.max_batches)
    bar = tqdm(batches, total=total, desc=f"epoch {epoch + 1}", disable=not settings.progress)
    for i, (images, labels) in enumerate(bar):
        images = to_model_input(
            images,
            device=settings.device,
            channels_last=plan.channels_last,
            norm=settings.input_norm,
        )
        labels = labels.to(settings.device, non_blocking=True)
        with autocast(plan):
            loss = module(images, labels)
        scaler.scale(loss / accum).backward()
        if (i + 1) % accum == 0 or (total is not None and i + 1 == total):
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
            if settings.after_step is not None:
                settings.after_step()
        if total:
            schedule.step_batch(epoch, (i + 1) / total)
        loss_sum += loss.detach() * len(labels)
        seen += len(labels)
        if started is None:
            started = time.perf_counter()
        else:
            images_timed += len(labels)
        if (i + 1) % PROGRESS_EVERY == 0 or i + 1 == total:  # reading the loss syncs the GPU
            _show_progress(bar, float(loss.detach()), optimizer, images_timed, started, epoch, i)
    bar.close()
    mean_loss = float(loss_sum) / max(seen, 1)
    if not math.isfinite(mean_loss):
        raise FloatingPointError(f"training loss became {mean_loss} in epoch {epoch + 1}")
    elapsed = time.perf_counter() - started if started is not None else 0.0
    return EpochStats(
        loss=mean_loss,
        images_per_s=images_timed / elapsed if elapsed > 0 else 0.0,
        lr=optimizer.param_groups[0]["lr"],
        steps=steps,
    )
