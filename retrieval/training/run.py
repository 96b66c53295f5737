"""Entry point of a training run: data, hardware plan, session, resume, fit."""

from __future__ import annotations

import json
from pathlib import Path

from retrieval import checkpoint as ckpt
from retrieval.config import RunConfig, resolve_batch
from retrieval.data.prepare import PreparedData, format_prepare_summary, prepare_data
from retrieval.device import RuntimePlan, apply_runtime, plan_runtime, probe_device
from retrieval.io import write_json_atomic
from retrieval.run_folder import current_run, finish_run, start_fresh_run, training_run
from retrieval.training.distributed import DistContext, barrier, init_distributed, shutdown
from retrieval.training.epoch_log import trim_epoch_log
from retrieval.training.frozen_candidate import choose_served_model, restore_trained_best
from retrieval.training.imprint import imprint_head
from retrieval.training.run_files import remove_killed_saves
from retrieval.training.schedule import cosine_end_note
from retrieval.training.trainer import TrainingSession, TrainResult


def prepare(
    cfg: RunConfig, *, num_workers: int = 1, progress: bool = True, seed_change: str = "note"
) -> PreparedData:
    """Scan, check and split the data of ``cfg`` (splits are written once and reused;
    ``seed_change`` as ``prepare_data`` takes it)."""
    d = cfg.data
    return prepare_data(
        Path(d.data),
        Path(cfg.workdir),
        image_root=Path(d.image_root) if d.image_root else None,
        min_size=d.min_size,
        seed=d.seed,
        num_workers=num_workers,
        progress=progress,
        seed_change=seed_change,
    )


def make_plan(cfg: RunConfig) -> RuntimePlan:
    t = cfg.train
    plan = plan_runtime(
        probe_device(device=t.device),
        use_bf16=t.use_bf16,
        num_workers=t.num_workers,
        accum_steps=t.accum_steps,
    )
    apply_runtime(plan)
    return plan


def _prepare_in_order(
    cfg: RunConfig, ctx: DistContext, plan: RuntimePlan, seed_change: str
) -> PreparedData:
    """Rank 0 writes splits and the class map; the other ranks then read them."""
    workers = max(1, plan.num_workers)
    prepared = None
    if ctx.is_main:
        prepared = prepare(cfg, num_workers=workers, seed_change=seed_change)
        print(format_prepare_summary(prepared), flush=True)
    barrier(ctx)
    if prepared is None:
        prepared = prepare(cfg, num_workers=workers, progress=False)
    return prepared


def run_training(
    cfg: RunConfig,
    *,
    fresh: bool = False,
    max_batches: int | None = None,
    seed_change: str = "note",
) -> TrainResult:
    """Train as ``cfg`` says; resumes from ``latest_model.pt`` unless ``fresh``.
    ``seed_change``: what a seed other than the stored splits' does (``prepare_data``)."""
    plan = make_plan(cfg)
    cfg = resolve_batch(cfg, plan.accum_steps)
    ctx = init_distributed(plan.device)
    try:
        prepared = _prepare_in_order(cfg, ctx, plan, seed_change)
        if ctx.is_main:
            print(plan.describe(), flush=True)
            print(_batch_line(cfg, plan, ctx), flush=True)
            _print_schedule_note(cfg)
            _tidy_checkpoints(Path(cfg.workdir), fresh=fresh)
        barrier(ctx)  # every rank trains in the run folder rank 0 chose
        session = TrainingSession(cfg, prepared, plan, ctx)
        if ctx.is_main:
            restore_trained_best(session.dir, fresh=fresh)
        latest = session.dir / ckpt.LATEST
        if latest.exists() and not fresh:
            session.resume(latest)
            if ctx.is_main:
                print(f"resuming from {latest} at epoch {session.progress.next_epoch + 1}")
        elif cfg.loss.head_init != "random" and ctx.is_main:
            # Fresh start only (a resume keeps the trained head); rank 0 only: DDP copies its
            # weights to the other ranks when it wraps the module.
            imprint_head(
                session.model,
                session.head,
                prepared.train,
                prepared.class_to_idx,
                transform=session.eval_transform,
                plan=plan,
                batch_size=cfg.train.eval_batch_size,
                mode=cfg.loss.head_init,
            )
        if ctx.is_main:
            session.dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(session.dir / "config.json", cfg.to_dict())
            trim_epoch_log(session.dir / "train_log.csv", session.progress.next_epoch)
        result = session.fit(max_batches=max_batches)
        if ctx.is_main and not result.interrupted:
            choice = choose_served_model(cfg, prepared, plan, session.progress, session.dir)
            if choice is not None:
                print(choice.describe(), flush=True)
            if cfg.data.eval_size == "auto":
                _choose_eval_size(cfg, session.dir / ckpt.BEST, prepared, plan)
            _build_gallery(cfg, session.dir / ckpt.BEST, prepared, session.dir.parent)
            switched = finish_run(Path(cfg.workdir))
            if switched:
                print(switched, flush=True)
        return result
    finally:
        shutdown(ctx)


def _tidy_checkpoints(workdir: Path, *, fresh: bool) -> None:
    """Before the run touches its checkpoints: a fresh run gets a folder of its own when the
    previous run has files (kept whole, still answering searches), and the run to train has no
    leftovers of killed saves."""
    lines = [
        fresh and start_fresh_run(workdir),
        remove_killed_saves(workdir, {current_run(workdir), training_run(workdir)}),
    ]
    for line in lines:
        if line:
            print(line, flush=True)


def _choose_eval_size(
    cfg: RunConfig, best: Path, prepared: PreparedData, plan: RuntimePlan
) -> None:
    """Record in ``best`` the size val prefers (retrieval.eval_size); search reads it there."""
    from retrieval.eval_size import choose_eval_size, store_choice
    from retrieval.inference import inference_model_from_state

    state = ckpt.load_checkpoint(best)
    loaded = inference_model_from_state(state, best, plan)
    choice = choose_eval_size(
        loaded.model,
        prepared.train,
        prepared.val,
        loaded.class_to_idx,
        train_size=cfg.data.image_size,
        plan=plan,
        batch_size=cfg.train.eval_batch_size,
    )
    ckpt.save_atomic(store_choice(state, choice), best)
    print(choice.describe(), flush=True)


def _build_gallery(cfg: RunConfig, best: Path, prepared: PreparedData, run: Path) -> None:
    """Index the train split (and the enrolment journal) with the best model into ``run``'s
    gallery now, so the first search is instant, and say which decision rule, and whether
    local matching, val chose for it."""
    from retrieval.calibration.fusion_fit import describe_fusion
    from retrieval.calibration.local_policy import ensure_fusion
    from retrieval.calibration.policy import describe_policy
    from retrieval.workspace import open_workspace

    ws = open_workspace(
        Path(cfg.workdir),
        best,
        batch_size=cfg.train.eval_batch_size,
        rebuild=True,
        device=cfg.train.device,
        run=run,
    )
    print(f"gallery: {ws.gallery.size} images indexed in {ws.gallery_root}")
    print(describe_policy(ws.gallery.policy_for(expand=False)))
    fusion = ensure_fusion(ws, prepared.val)
    if fusion is not None:
        print(describe_fusion(fusion, "auto"))


def _print_schedule_note(cfg: RunConfig) -> None:
    phase2 = cfg.train.epochs - cfg.loss.warmup_epochs
    if cfg.train.scheduler == "cosine" and phase2 > 0:
        note = cosine_end_note(phase2, cfg.train.cosine_t0, cfg.loss.warmup_epochs)
        if note:
            print(note, flush=True)


def _batch_line(cfg: RunConfig, plan: RuntimePlan, ctx: DistContext) -> str:
    t = cfg.train
    per_step = t.batch_p * t.batch_k
    effective = per_step * plan.accum_steps * ctx.world_size
    return (
        f"batch: P={t.batch_p} x K={t.batch_k} = {per_step} images, accumulation "
        f"{plan.accum_steps}, {ctx.world_size} process(es): effective batch {effective}"
    )


def summary_json(result: TrainResult) -> str:
    return json.dumps(
        {
            "best_val_recall_at_1": result.best_recall_at_1,
            "best_epoch": result.best_epoch,
            "epochs_done": result.epochs_done,
            "stopped_early": result.stopped_early,
            "interrupted": result.interrupted,
            "checkpoints": str(result.checkpoint_dir),
        }
    )
