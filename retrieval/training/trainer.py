"""A training run from prepared data to checkpoints: resumable, Ctrl-C safe, DDP-aware.

``run_training`` is what ``train.py`` calls. The session object keeps the pieces of one run
together so that each step (build, resume, one epoch, save) stays a short method.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from retrieval import checkpoint as ckpt
from retrieval.config import RunConfig
from retrieval.data.dataset import ImageDataset, KeyedDataset
from retrieval.data.prepare import PreparedData
from retrieval.data.sampler import EpochStream, PKSampler
from retrieval.data.transforms import build_eval_transform, build_train_transform
from retrieval.device import RuntimePlan, make_grad_scaler
from retrieval.errors import InputError
from retrieval.metrics import RetrievalMetrics
from retrieval.model.arcface import ArcFaceHead, dynamic_margins
from retrieval.model.embedder import build_embedding_model, check_frozen_stages
from retrieval.run_folder import checkpoints_dir, training_run
from retrieval.training.distributed import DistContext, barrier, broadcast_object, device_for
from retrieval.training.ema import build_ema
from retrieval.training.epoch_log import append_epoch_row, epoch_line, interrupt_line
from retrieval.training.loop import EpochStats, StepSettings, TrainModule, train_one_epoch
from retrieval.training.schedule import (
    LRSchedule,
    build_optimizer,
    param_groups,
    phase_for_epoch,
)
from retrieval.training.selection import Progress, is_better
from retrieval.training.validate import validate


@dataclass(frozen=True)
class TrainResult:
    best_recall_at_1: float | None
    best_epoch: int  # 1-based; 0 when no epoch finished
    epochs_done: int
    stopped_early: bool
    interrupted: bool
    checkpoint_dir: Path


class TrainingSession:
    """One run's model, optimiser, data and counters."""

    def __init__(self, cfg: RunConfig, prepared: PreparedData, plan: RuntimePlan, ctx: DistContext):
        self.cfg, self.prepared, self.plan, self.ctx = cfg, prepared, plan, ctx
        self.device = device_for(ctx, plan.device)
        self.dir = checkpoints_dir(training_run(Path(cfg.workdir)))
        self.accum_steps = plan.accum_steps
        self.progress = Progress()
        self.saved_epochs = 0  # whole epochs in latest_model.pt: what an interrupt keeps
        ckpt.seed_rngs(cfg.data.seed + ctx.rank)  # DDP broadcasts rank 0's initial weights
        self.fingerprint = ckpt.data_fingerprint(
            {r.group for r in prepared.train}, prepared.class_to_idx
        )
        self._build_model()
        self._build_data()

    def _build_model(self) -> None:
        m, lc, tc = self.cfg.model, self.cfg.loss, self.cfg.train
        self.model = build_embedding_model(
            m.backbone,
            embedding_dim=m.embedding_dim,
            pretrained=m.pretrained,
            bn_train=m.bn_train,
            pooling=m.pooling,
            input_norm=m.input_norm,
        )
        check_frozen_stages(self.model.backbone, m.backbone, m.frozen_stages)
        self.head = ArcFaceHead(
            m.embedding_dim,
            len(self.prepared.class_to_idx),
            scale=lc.scale,
            margin_rad=lc.margin_rad,
            subcenters=lc.subcenters,
            class_margins=self._class_margins() if lc.dynamic_margins else None,
        )
        self.module = TrainModule(
            self.model,
            self.head,
            triplet_weight=lc.triplet_weight,
            triplet_margin=lc.triplet_margin,
        ).to(self.device)
        if self.plan.channels_last:
            self.module.to(memory_format=torch.channels_last)
        self.ema = build_ema(self.model, tc.ema_decay)
        backbone = list(self.model.backbone.parameters())
        in_backbone = {id(param) for param in backbone}
        head = [param for param in self.module.parameters() if id(param) not in in_backbone]
        groups = param_groups(backbone, head, lr=tc.lr, head_lr_mult=tc.head_lr_mult)
        self.optimizer = build_optimizer(
            groups, name=tc.optimizer, lr=tc.lr, weight_decay=tc.weight_decay
        )
        self.schedule = LRSchedule(
            self.optimizer,
            name=tc.scheduler,
            warmup_epochs=lc.warmup_epochs,
            warmup_lr_mult=tc.warmup_lr_mult,
            t0=tc.cosine_t0,
            ramp_epochs=tc.lr_ramp_epochs,
        )
        self.scaler = make_grad_scaler(self.plan)

    def _class_margins(self) -> torch.Tensor:
        """Per-class margins from training-image counts (rare individuals get larger ones)."""
        counts = Counter(r.label for r in self.prepared.train)
        order = sorted(self.prepared.class_to_idx, key=self.prepared.class_to_idx.__getitem__)
        return dynamic_margins([max(1, counts[name]) for name in order])

    def _build_data(self) -> None:
        d, t = self.cfg.data, self.cfg.train
        train_set = ImageDataset(
            self.prepared.train,
            self.prepared.class_to_idx,
            build_train_transform(d.image_size, hflip=d.hflip, random_erasing=d.random_erasing),
        )
        self.sampler = PKSampler(
            train_set.labels,
            p=t.batch_p,
            k=t.batch_k,
            seed=d.seed,
            num_replicas=self.ctx.world_size,
            rank=self.ctx.rank,
        )
        self.stream = EpochStream(self.sampler)
        self._batches: Iterator | None = None
        workers = self.plan.num_workers
        self.loader = DataLoader(
            KeyedDataset(train_set),
            batch_sampler=self.stream,
            num_workers=workers,
            pin_memory=self.plan.pin_memory,
            persistent_workers=workers > 0,
            prefetch_factor=2 if workers > 0 else None,
        )
        self.eval_transform = build_eval_transform(d.image_size)

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights that are validated and saved for inference: the EMA when it is on."""
        return self.model if self.ema is None else self.ema.module

    # ----------------------------------------------------------------- checkpoints
    def state(self, metrics: RetrievalMetrics | None) -> dict[str, Any]:
        model_state = ckpt.fp32_state_dict(self.eval_model)  # what evaluation and search load
        extra = {}
        if self.ema is not None:
            extra = {"train_model": ckpt.fp32_state_dict(self.model), "ema": self.ema.state_dict()}
        return {
            "format": ckpt.FORMAT_VERSION,
            "model": model_state,
            **extra,
            "model_hash": ckpt.weights_hash(model_state),
            "head": ckpt.fp32_state_dict(self.head),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.progress.next_epoch,
            "progress": asdict(self.progress),
            "best_metric": self.progress.best_recall_at_1,
            "val_metrics": _metrics_dict(metrics),
            "config": self.cfg.to_dict(),
            "class_to_idx": self.prepared.class_to_idx,
            "backbone": self.cfg.model.backbone,
            "embedding_dim": self.cfg.model.embedding_dim,
            "pooling": self.cfg.model.pooling,
            "input_norm": self.cfg.model.input_norm,
            "image_size": self.cfg.data.image_size,
            "data_fingerprint": self.fingerprint,
            "versions": ckpt.library_versions(),
            "rng": ckpt.rng_states(),
        }

    def resume(self, path: Path) -> None:
        state = ckpt.load_checkpoint(path)
        m = self.cfg.model
        ckpt.check_resumable(
            state,
            backbone=m.backbone,
            input_norm=m.input_norm,
            fingerprint=self.fingerprint,
            path=path,
        )
        try:
            self.model.load_state_dict(state.get("train_model", state["model"]))
            self.head.load_state_dict(state["head"])
        except RuntimeError as err:  # shapes or keys differ: another model/head configuration
            raise InputError(
                f"{path} was trained with another model or head configuration (pooling, "
                "embedding size, sub-centres or margins); use --fresh to start over or "
                "another --workdir for a separate run"
            ) from err
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as err:  # parameter groups differ: another --head_lr_mult
            stored = state.get("config", {}).get("train", {}).get("head_lr_mult", 1.0)
            raise InputError(
                f"{path} was trained with --head_lr_mult {stored:g} (its optimiser has other "
                f"parameter groups); resume with --head_lr_mult {stored:g}, or use --fresh"
            ) from err
        self.schedule.load_state_dict(state["scheduler"])
        self._follow_new_lr(state.get("config", {}).get("train", {}).get("lr"))
        self.scaler.load_state_dict(state["scaler"])
        self.progress = Progress(**state["progress"])
        self.saved_epochs = self.progress.next_epoch
        ckpt.restore_rng_states(state["rng"])

    def _follow_new_lr(self, stored: float | None) -> None:
        """A resume with another ``--lr`` rescales the loaded schedule instead of ignoring it."""
        lr = self.cfg.train.lr
        if not stored or stored == lr:
            return
        self.schedule.rescale(lr / stored)
        if self.ctx.is_main:
            print(f"lr: the checkpoint trained at --lr {stored:g}; resuming at --lr {lr:g}")

    def save(self, metrics: RetrievalMetrics | None, *, improved: bool) -> None:
        """Save a finished epoch; ``latest`` last, as the commit point: an interrupt before it
        redoes the epoch, which rewrites best and periodic with the same weights."""
        if not self.ctx.is_main:
            return
        state = self.state(metrics)
        if improved:
            ckpt.save_atomic(state, self.dir / ckpt.BEST)
        if self.progress.next_epoch % 10 == 0:
            ckpt.save_atomic(state, self.dir / ckpt.periodic_name(self.progress.next_epoch))
        ckpt.save_atomic(state, self.dir / ckpt.LATEST)
        self.saved_epochs = self.progress.next_epoch

    # ----------------------------------------------------------------- epochs
    def _step_module(self, backbone_trainable: bool) -> torch.nn.Module:
        """The module that takes gradient steps: DDP-wrapped (per phase) and maybe compiled."""
        module: torch.nn.Module = self.module
        if self.ctx.enabled:
            # Rebuilt at each phase: DDP registers hooks only for parameters needing grad.
            ids = [self.device.index] if self.device.type == "cuda" else None
            module = torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)
        if self.cfg.train.compile:
            module = torch.compile(module)
        return module

    def batches(self, epoch: int) -> Iterator:
        """The run's one batch iterator, started at the first epoch this process trains."""
        if self._batches is None:
            self.stream.start_epoch = epoch
            # A loader iterator draws its workers' base seed from torch's generator: forked,
            # so a resumed run's generator stays where the uninterrupted run's was.
            with torch.random.fork_rng(devices=[]):
                self._batches = iter(self.loader)
        return self._batches

    def run_epoch(self, epoch: int, step_module: torch.nn.Module, max_batches: int | None):
        """One epoch of ``len(sampler)`` batches (fewer with a ``max_batches`` smoke-test cap,
        which truncates epochs; the batch stream simply continues)."""
        per_epoch = len(self.sampler)
        settings = StepSettings(
            plan=self.plan,
            accum_steps=self.accum_steps,
            device=self.device,
            input_norm=self.model.input_norm,
            progress=self.ctx.is_main,
            max_batches=min(per_epoch, max_batches or per_epoch),
            after_step=None if self.ema is None else lambda: self.ema.update_parameters(self.model),
        )
        stats = train_one_epoch(
            step_module,
            self.batches(epoch),
            optimizer=self.optimizer,
            scaler=self.scaler,
            schedule=self.schedule,
            epoch=epoch,
            settings=settings,
        )
        metrics = None
        if self.ctx.is_main:
            metrics = validate(
                self.eval_model,
                gallery=self.prepared.train,
                queries=self.prepared.val,
                class_to_idx=self.prepared.class_to_idx,
                transform=self.eval_transform,
                plan=self.plan,
                batch_size=self.cfg.train.eval_batch_size,
            )
        return stats, broadcast_object(self.ctx, metrics)

    def record(
        self, epoch: int, stats: EpochStats, metrics: RetrievalMetrics | None, seconds: float
    ):
        """Update the counters after an epoch; returns whether it is the new best."""
        phase = phase_for_epoch(
            epoch, warmup_epochs=self.cfg.loss.warmup_epochs, margin_rad=self.cfg.loss.margin_rad
        )
        recall = metrics.recall_at_1 if metrics is not None else None
        self.schedule.step_epoch(epoch, recall)
        p = self.progress
        p.next_epoch = epoch + 1
        p.train_seconds += seconds
        # Selection on val Recall@1, ties broken by mAP: on a small val split Recall@1 stops
        # moving within a few epochs while the ranking still improves (measured on dogs_kaggle:
        # R@1 flat at 0.945 from epoch 6, mAP 0.80 -> 0.89). Without a val split the latest
        # model is the best one.
        improved = metrics is None or is_better(metrics, p, select_on=self.cfg.train.select_on)
        if metrics is not None and improved:
            p.best_recall_at_1, p.best_map = metrics.recall_at_1, metrics.map
        if improved:
            p.best_epoch, p.bad_epochs = epoch, 0
        elif phase.number == 2:
            p.bad_epochs += 1
        if self.ctx.is_main:
            append_epoch_row(
                self.dir / "train_log.csv",
                {
                    "epoch": epoch + 1,
                    "phase": phase.number,
                    "margin_rad": phase.margin_rad,
                    "loss": stats.loss,
                    "val_recall_at_1": recall,
                    "val_recall_at_5": metrics.recall_at_5 if metrics else None,
                    "val_map": metrics.map if metrics else None,
                    "lr": stats.lr,
                    "images_per_s": stats.images_per_s,
                    "epoch_time_s": seconds,
                },
            )
            print(epoch_line(epoch, phase.number, stats, metrics), flush=True)
        return improved

    def fit(self, max_batches: int | None = None) -> TrainResult:
        cfg, stopped, interrupted = self.cfg, False, False
        current_phase, step_module = None, self.module
        epoch = self.progress.next_epoch
        try:
            for epoch in range(self.progress.next_epoch, cfg.train.epochs):
                phase = phase_for_epoch(
                    epoch, warmup_epochs=cfg.loss.warmup_epochs, margin_rad=cfg.loss.margin_rad
                )
                if phase != current_phase:
                    self.model.set_backbone_trainable(
                        phase.backbone_trainable, frozen_stages=cfg.model.frozen_stages
                    )
                    self.head.margin_rad = phase.margin_rad
                    step_module, current_phase = self._step_module(phase.backbone_trainable), phase
                started = time.perf_counter()
                stats, metrics = self.run_epoch(epoch, step_module, max_batches)
                improved = self.record(epoch, stats, metrics, time.perf_counter() - started)
                self.save(metrics, improved=improved)
                barrier(self.ctx)
                if self.progress.bad_epochs >= cfg.train.patience:
                    stopped = True
                    break
        except KeyboardInterrupt:
            # Nothing of the unfinished epoch is saved: latest_model.pt keeps the last whole
            # epoch (weights, optimiser, schedule, RNG states; the batch stream is seeded per
            # epoch), so the next run redoes this epoch exactly as an uninterrupted run would.
            interrupted = True
            if self.ctx.is_main:
                print(interrupt_line(epoch, self.saved_epochs), flush=True)
        return self.result(stopped, interrupted)

    def result(self, stopped: bool, interrupted: bool) -> TrainResult:
        p = self.progress
        return TrainResult(
            best_recall_at_1=p.best_recall_at_1 if p.best_recall_at_1 >= 0 else None,
            best_epoch=p.best_epoch + 1,
            epochs_done=self.saved_epochs if interrupted else p.next_epoch,
            stopped_early=stopped,
            interrupted=interrupted,
            checkpoint_dir=self.dir,
        )


def _metrics_dict(metrics: RetrievalMetrics | None) -> dict[str, float] | None:
    if metrics is None:
        return None
    return {
        "recall_at_1": metrics.recall_at_1,
        "recall_at_5": metrics.recall_at_5,
        "map": metrics.map,
        "identity_balanced_map": metrics.identity_balanced_map,
    }
