"""Train the re-identification model: ``python train.py --fresh`` (SPEC 3).

Thin CLI: flags -> RunConfig -> retrieval.training.run. Precedence of values: built-in
defaults < --preset < the run being resumed (its checkpoints/config.json, unless --fresh) <
--config FILE < explicit flags.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from retrieval.cli import add_bool_flag, add_workdir_args, cli_main
from retrieval.config import (
    EVAL_SIZES,
    HEAD_INITS,
    INPUT_NORMS,
    OPTIMIZERS,
    POOLINGS,
    PRESETS,
    SCHEDULERS,
    SELECTION_METRICS,
)
from retrieval.errors import InputError

# flag name -> config key, where they differ (SPEC 8 names the flags)
RENAMED = {"margin": "margin_rad"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train.py", description=__doc__.splitlines()[0])
    add_workdir_args(p, checkpoint=False)
    p.add_argument("--data", help="data folder data/{class}/{ID}_{seq}.jpg or a CSV manifest")
    p.add_argument("--image_root", help="folder the manifest's file names are relative to")
    p.add_argument(
        "--corrections",
        metavar="WORKDIR",
        help="train on --data plus the photos people filed on the review page of WORKDIR "
        "(search.py --serve), minus those marked unusable; they join the train split",
    )
    p.add_argument("--backbone", help="timm model name (default tf_efficientnetv2_l)")
    p.add_argument(
        "--pretrained", help="timm (hub, default) | pypi (EfficientNet-Lite0) | none | PATH"
    )
    p.add_argument("--embedding_dim", type=int, help="embedding size (default 512)")
    p.add_argument("--image_size", type=int, help="training/eval image size (default 480)")
    p.add_argument(
        "--eval_size",
        choices=EVAL_SIZES,
        help="size search and evaluation embed at: auto = chosen on val mAP after training "
        "among the train size and up to 1.29x it (default), train = the train size",
    )
    p.add_argument(
        "--min_size", type=int, help="drop groups with an image below this (default 224)"
    )
    p.add_argument("--epochs", type=int, help="total epochs, warm-up included (default 35)")
    p.add_argument(
        "--warmup_epochs", type=int, help="phase 1: frozen backbone, margin 0 (default 5)"
    )
    p.add_argument("--margin", type=float, help="ArcFace margin in RADIANS (default 0.5)")
    p.add_argument("--scale", type=float, help="ArcFace scale s (default 64)")
    p.add_argument(
        "--batch_p", type=int, help="classes per batch (default 16 / accumulation steps)"
    )
    p.add_argument("--batch_k", type=int, help="images per class in a batch (default 4)")
    p.add_argument("--lr", type=float, help="learning rate (default 1e-4)")
    p.add_argument(
        "--head_lr_mult", type=float, help="lr of neck and ArcFace head = lr * this (default 1)"
    )
    p.add_argument(
        "--warmup_lr_mult", type=float, help="lr in the frozen warm-up = lr * this (default 1)"
    )
    p.add_argument("--weight_decay", type=float, help="weight decay (default 0.01)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="default adamw")
    p.add_argument("--scheduler", choices=SCHEDULERS, help="default cosine restarts")
    p.add_argument(
        "--cosine_t0", type=int, help="phase-2 epochs of the first cosine cycle (default 10)"
    )
    p.add_argument(
        "--lr_ramp_epochs",
        type=float,
        help="phase 2's lr rises linearly from ~0 over its first N epochs (default 0: off)",
    )
    p.add_argument("--patience", type=int, help="early stopping patience in epochs (default 10)")
    add_bool_flag(p, "use_bf16", "bf16 autocast (default: decided from the GPU)")
    p.add_argument(
        "--num_workers", type=int, help="data loader workers (default: from the machine)"
    )
    p.add_argument(
        "--accum_steps", type=int, help="gradient accumulation (default: from GPU memory)"
    )
    p.add_argument("--eval_batch_size", type=int, help="batch size for embedding (default 64)")
    p.add_argument("--ema_decay", type=float, help="EMA of weights for val/best (0 = off)")
    p.add_argument(
        "--select_on",
        choices=SELECTION_METRICS,
        help="val metric that picks best_model.pt and stops early (default recall_at_1)",
    )
    add_bool_flag(p, "compile", "torch.compile the training step")
    add_bool_flag(p, "hflip", "horizontal flip augmentation (default true)")
    p.add_argument("--no_hflip", action="store_true", help="no flip augmentation (--hflip=false)")
    p.add_argument(
        "--random_erasing",
        type=float,
        help="probability of blanking one random rectangle of each training image (default 0)",
    )
    add_bool_flag(p, "bn_train", "update backbone BatchNorm statistics (off: frozen)")
    p.add_argument("--pooling", choices=POOLINGS, help="global pooling (default avg)")
    p.add_argument(
        "--frozen_stages",
        type=int,
        help="the backbone's stem and first N stages stay frozen after the warm-up too "
        "(default 0: the whole backbone fine-tunes)",
    )
    p.add_argument(
        "--input_norm",
        choices=INPUT_NORMS,
        help="pixel mean/std: the backbone's own, as its weights were trained (default), or "
        "ImageNet's (what checkpoints before this flag used)",
    )
    p.add_argument("--subcenters", type=int, help="sub-center ArcFace centres per class (1)")
    add_bool_flag(p, "dynamic_margins", "per-class margins from class frequency (off)")
    p.add_argument(
        "--head_init",
        choices=HEAD_INITS,
        help="ArcFace centres: random, imprint = each class's mean train embedding, "
        "imprint_centred = the same after removing the mean of all, or auto = imprint unless "
        "the class means share one narrow cone (auto)",
    )
    p.add_argument(
        "--triplet_weight",
        type=float,
        help="add this x a batch-hard triplet loss on the embeddings to ArcFace (default 0: off)",
    )
    p.add_argument(
        "--triplet_margin",
        type=float,
        help="the triplet margin, a distance between unit vectors (default 0.3)",
    )
    p.add_argument("--seed", type=int, help="seed for splits and sampling (default 42)")
    p.add_argument("--fresh", action="store_true", help="ignore existing checkpoints")
    p.add_argument(
        "--resplit",
        action="store_true",
        help="split the data again with --seed, replacing splits/ (with --fresh when a run "
        "exists); without it a --seed other than the stored splits' is refused",
    )
    p.add_argument("--preset", choices=PRESETS, help="demo: synthetic data, lite0, minutes on CPU")
    p.add_argument("--prepare_only", action="store_true", help="write splits and exit")
    p.add_argument("--config", help="YAML/JSON file of defaults (flat keys as the flags)")
    p.add_argument("--max_batches", type=int, help="cap batches per epoch (smoke tests)")
    return p


NOT_CONFIG = {
    "workdir",
    "corrections",
    "fresh",
    "resplit",
    "preset",
    "prepare_only",
    "config",
    "max_batches",
    "no_hflip",
}


def resolve_values(args: argparse.Namespace) -> dict[str, Any]:
    """Merge preset, config file and explicit flags into flat config values."""
    from retrieval.config import load_config_file
    from retrieval.presets import preset_values

    values = preset_values(args.preset, Path(args.workdir))
    if not args.fresh:
        values.update(_resumed_values(Path(args.workdir)))
    if args.config:
        values.update(load_config_file(Path(args.config)))
    for name, value in vars(args).items():
        if name not in NOT_CONFIG and value is not None:
            values[RENAMED.get(name, name)] = value
    if args.no_hflip:
        if args.hflip:
            raise InputError("--hflip and --no_hflip contradict each other: give one")
        values["hflip"] = False
    # Absolute paths: the checkpoint's config must find the data from any folder later.
    for key in ("data", "image_root"):
        if values.get(key):
            values[key] = str(Path(values[key]).resolve())
    return values


def _resumable_checkpoints(workdir: Path) -> Path | None:
    """The checkpoint folder of the run ``train.py`` would resume in ``workdir``: None when
    it has no ``latest_model.pt`` to resume from."""
    from retrieval.checkpoint import LATEST
    from retrieval.run_folder import checkpoints_dir, training_run

    checkpoints = checkpoints_dir(training_run(Path(workdir)))
    return checkpoints if (checkpoints / LATEST).is_file() else None


def _resumed_values(workdir: Path) -> dict[str, Any]:
    """The settings of the run in ``workdir`` when there is one to resume, else nothing."""
    from retrieval.config import stored_run_values

    checkpoints = _resumable_checkpoints(workdir)
    stored = None if checkpoints is None else checkpoints / "config.json"
    if stored is None or not stored.is_file():
        return {}
    print(f"resuming with the settings in {stored}; flags given now override them")
    return stored_run_values(stored)


def _run(args: argparse.Namespace) -> int:
    from retrieval.config import build_run_config
    from retrieval.presets import materialize_preset

    cfg = build_run_config(resolve_values(args), workdir=args.workdir)
    if cfg.loss.warmup_epochs == cfg.train.epochs:
        print(
            f"note: --warmup_epochs = --epochs = {cfg.train.epochs}: the backbone stays frozen "
            "throughout (a probe: only the neck and head train)"
        )
    materialize_preset(args.preset, Path(args.workdir), cfg.data.data)
    if args.corrections:
        cfg = _with_corrections(cfg, args)
    seed_change = _seed_change(args)
    if args.prepare_only:
        from retrieval.data.prepare import format_prepare_summary
        from retrieval.training.run import prepare

        print(format_prepare_summary(prepare(cfg, seed_change=seed_change)))
        return 0
    from retrieval.training.run import run_training, summary_json

    result = run_training(
        cfg, fresh=args.fresh, max_batches=args.max_batches, seed_change=seed_change
    )
    print(summary_json(result))
    return 130 if result.interrupted else 0


def _with_corrections(cfg, args: argparse.Namespace):
    """The run's data as the review left it: a manifest the data loader reads (issue 37)."""
    from dataclasses import replace

    from retrieval.review.training_data import training_manifest

    if _resumable_checkpoints(args.workdir) and not args.fresh:
        raise InputError(
            f"--corrections changes the training data, which the run in {args.workdir} cannot "
            "resume on; add --fresh (the previous run's checkpoints are kept)"
        )
    d = cfg.data
    export = training_manifest(
        Path(args.corrections),
        data=Path(d.data),
        image_root=Path(d.image_root) if d.image_root else None,
        workdir=Path(args.workdir),
    )
    print(export.describe())
    return replace(cfg, data=replace(d, data=str(export.manifest.resolve()), image_root=None))


def _seed_change(args: argparse.Namespace) -> str:
    """What a seed other than the stored splits' does: an explicit --seed is refused unless
    --resplit; a resumed run cannot change its splits."""
    if args.resplit and _resumable_checkpoints(args.workdir) and not args.fresh:
        raise InputError(
            f"--resplit makes new train/val/test splits, which the run in {args.workdir} cannot "
            "resume on; add --fresh (the previous run's checkpoints are kept)"
        )
    if args.resplit:
        return "resplit"
    return "refuse" if args.seed is not None else "note"


def _run_locked(args: argparse.Namespace) -> int:
    """A run writes splits, checkpoints and the gallery: one writer per workdir."""
    import os

    from retrieval.workdir_lock import command_line, workdir_lock

    if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 holds it for the whole run
        return _run(args)
    with workdir_lock(Path(args.workdir), command_line("train.py")):
        return _run(args)


def main(argv: list[str] | None = None) -> int:
    return cli_main("train.py", build_parser, _run_locked, argv)


if __name__ == "__main__":
    sys.exit(main())
