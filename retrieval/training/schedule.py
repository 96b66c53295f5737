"""The margin schedule and the optimiser/LR-scheduler builders (SPEC 2.4, 3.3).

Phase 1 (warm-up): backbone frozen, ArcFace margin 0 (plain softmax on scaled cosines), so the
randomly initialised head and neck settle before any gradient reaches pretrained features.
Phase 2: everything trainable, the target margin. One head serves both phases.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

T_MULT = 2  # each cosine cycle is this many times as long as the one before (SPEC 3.3)
END_FACTOR_OK = 0.1  # a planned end at <= 10% of the base lr counts as annealed


@dataclass(frozen=True)
class Phase:
    number: int  # 1 = warm-up, 2 = fine-tuning
    margin_rad: float
    backbone_trainable: bool


def phase_for_epoch(epoch: int, *, warmup_epochs: int, margin_rad: float) -> Phase:
    """Phase of a 0-based epoch."""
    if epoch < warmup_epochs:
        return Phase(number=1, margin_rad=0.0, backbone_trainable=False)
    return Phase(number=2, margin_rad=margin_rad, backbone_trainable=True)


def param_groups(
    backbone: Iterable[torch.nn.Parameter],
    head: Iterable[torch.nn.Parameter],
    *,
    lr: float,
    head_lr_mult: float = 1.0,
) -> list[dict]:
    """Optimiser groups: everything at ``lr``, or the head side at ``lr * head_lr_mult``.

    The head side (neck, pooling, ArcFace class centres) starts from random init while the
    backbone starts from pretrained features, so it can take larger steps: at one lr the class
    centres barely move in a short warm-up. Measured (bench/RESULTS.md): x10 helps photos of
    trained individuals and hurts unseen ones, so the default stays 1. A multiplier of 1 gives
    one group, as before the option existed, so older checkpoints still resume. The backbone
    group comes first: the logged lr is the backbone's.
    """
    backbone, head = list(backbone), list(head)
    if head_lr_mult == 1.0:
        return [{"params": backbone + head, "lr": lr}]
    return [{"params": backbone, "lr": lr}, {"params": head, "lr": lr * head_lr_mult}]


def build_optimizer(
    params: Iterable[torch.nn.Parameter] | list[dict],
    *,
    name: str,
    lr: float,
    weight_decay: float,
) -> torch.optim.Optimizer:
    """AdamW (default) or SGD with Nesterov momentum, over parameters or ``param_groups``.

    Frozen parameters get no gradient and optimisers skip parameters whose grad is None, so
    one optimiser holds every parameter across both phases and its state resumes cleanly.
    """
    params = list(params)
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay
        )
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def cosine_end_note(phase2_epochs: int, t0: int, warmup_epochs: int) -> str | None:
    """A warning when phase 2 stops inside a cosine cycle at a high learning rate, else None.

    Why: with warm restarts (cycles of t0, 2*t0, 4*t0 ... epochs) a phase 2 that is not
    t0 * (2^n - 1) epochs long stops inside a cycle. Shortly after a restart, its last epochs
    train at nearly the full rate and undo what the annealed ones settled (``--epochs 16``
    with 2 warm-up epochs: 4 epochs at 90-100% of the base rate). Early stopping may end a
    run sooner; this is about the planned length.
    """
    done, cycle = 0, t0
    while done + cycle <= phase2_epochs:
        done, cycle = done + cycle, cycle * T_MULT
    into = phase2_epochs - done
    end_factor = (1.0 + math.cos(math.pi * into / cycle)) / 2.0
    if into == 0 or end_factor <= END_FACTOR_OK:
        return None
    shorter, longer = warmup_epochs + done, warmup_epochs + done + cycle
    options = f"--epochs {shorter} or {longer}" if done else f"--epochs {longer}"
    restarts = ", ".join(str(t0 * sum(T_MULT**i for i in range(n))) for n in (1, 2, 3))
    return (
        f"lr schedule: phase 2 has {phase2_epochs} epochs and the cosine schedule restarts "
        f"after {restarts} ... of them (--cosine_t0 {t0}), so the run stops "
        f"{into} epochs into a {cycle}-epoch cycle, at {end_factor:.0%} of the base lr; for "
        f"a run that ends annealed use {options}, or --cosine_t0 {phase2_epochs} (one cycle)"
    )


class LRSchedule:
    """Cosine warm restarts (T_0=``t0``, 10 by default, T_mult=2) or ReduceLROnPlateau, over
    phase 2 only.

    The warm-up phase runs at the base learning rate times ``warmup_lr_mult``: only the head
    side trains then (the backbone is frozen), so this is the linear-probe step of LP-FT at
    its own rate. Measured at x10 (bench/RESULTS.md) it fits the neck to the trained
    individuals and costs open-set mAP, so the default stays 1. Phase-2 time is counted from
    its first epoch so that the first cosine cycle starts at the full base rate.

    ``ramp_epochs`` (cosine only): phase 2's rate rises linearly from near 0 to the cosine
    value over its first ``ramp_epochs`` epochs. Why: the backbone's AdamW moments are empty
    when it is unfrozen, so its first steps move every weight by about the full rate, just
    when the margin switches on and the loss jumps (0.1 -> 4.9 on DogFaceNet).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        name: str,
        warmup_epochs: int,
        warmup_lr_mult: float = 1.0,
        t0: int = 10,
        ramp_epochs: float = 0.0,
    ):
        if ramp_epochs > 0 and name != "cosine":
            raise ValueError(f"an lr ramp needs the cosine schedule, not {name!r}")
        self.name = name
        self.t0 = t0
        self.ramp_epochs = ramp_epochs
        self._batch_fraction = 0.0  # one batch as a fraction of the epoch (set per epoch)
        self.warmup_epochs = warmup_epochs
        self.warmup_lr_mult = warmup_lr_mult
        self.optimizer = optimizer
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        if name == "plateau":
            self.scheduler: torch.optim.lr_scheduler.LRScheduler | object = (
                torch.optim.lr_scheduler.ReduceLROnPlateau(
                    optimizer, mode="max", factor=0.5, patience=5
                )
            )
        else:
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
                optimizer, T_0=t0, T_mult=T_MULT
            )

    def start_epoch(self, epoch: int, batches: int | None = None) -> None:
        """Warm-up epochs at base lr x ``warmup_lr_mult``; the first phase-2 epoch back at base
        (or, with a ramp, at the ramp's rate for the first batch; ``batches``: this epoch's).

        Set at every epoch start rather than once, so a run resumed mid-warm-up gets it too.
        """
        self._batch_fraction = 1.0 / batches if batches else 0.0
        if batches and self._ramping(epoch - self.warmup_epochs):
            self.step_batch(epoch, 0.0)
            return
        if self.warmup_lr_mult == 1.0 or epoch > self.warmup_epochs:
            return
        factor = self.warmup_lr_mult if epoch < self.warmup_epochs else 1.0
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * factor

    def step_batch(self, epoch: int, fraction: float) -> None:
        """Per-iteration update (cosine only); ``fraction`` of the epoch done, in [0, 1):
        the rate of the next batch."""
        if self.name != "cosine" or epoch < self.warmup_epochs:
            return
        into_phase2 = epoch - self.warmup_epochs + fraction
        self.scheduler.step(into_phase2)
        if self._ramping(into_phase2):
            # the next batch ends at into_phase2 + one batch: the first batch is not wasted at 0
            factor = min(1.0, (into_phase2 + self._batch_fraction) / self.ramp_epochs)
            for group in self.optimizer.param_groups:
                group["lr"] *= factor

    def rescale(self, ratio: float) -> None:
        """Every rate, present and scheduled, times ``ratio``: a run resumed with another
        ``--lr`` follows it (the loaded optimiser and scheduler states carry the old rates)."""
        for group in self.optimizer.param_groups:
            group["lr"] *= ratio
            if "initial_lr" in group:
                group["initial_lr"] *= ratio
        if isinstance(self.scheduler, torch.optim.lr_scheduler.CosineAnnealingWarmRestarts):
            self.scheduler.base_lrs = [base * ratio for base in self.scheduler.base_lrs]

    def _ramping(self, into_phase2: float) -> bool:
        return self.ramp_epochs > 0 and 0 <= into_phase2 < self.ramp_epochs

    def step_epoch(self, epoch: int, val_recall_at_1: float | None) -> None:
        """End-of-epoch update (plateau only, on validation Recall@1)."""
        if self.name == "plateau" and epoch >= self.warmup_epochs and val_recall_at_1 is not None:
            self.scheduler.step(val_recall_at_1)

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """The saved state, except that the first cycle keeps this run's ``t0``: a resumed run
        given a new ``--cosine_t0`` (as the end-of-cycle note advises) must follow it, and
        every step passes its epoch, from which torch derives the rest of the cycle."""
        self.scheduler.load_state_dict(state)
        if self.name == "cosine":
            self.scheduler.T_0 = self.t0
