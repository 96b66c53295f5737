"""Training throughput: the real loop (real images, real augmentation) vs a bare step.

Both measurements run in one process, on the same model, optimiser, batch, precision and
``train_one_epoch`` function; the bare step feeds synthetic tensors that already sit on the
device, so the ratio real/bare is the share of GPU speed the input pipeline keeps (issue 3 asks
for >= 0.9). Also prints what device auto-detection chose and the peak GPU memory.
``--frozen_stages N`` adds a third measurement, the bare step with the stem and the first N
stages frozen (as ``train.py --frozen_stages N`` trains after the warm-up), and its speed
relative to the whole backbone training.

    python bench/train_throughput.py --data ../shared/data/dogfacenet --batches 40
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retrieval.device import prepare_environment


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="data folder or CSV manifest")
    p.add_argument("--backbone", default="tf_efficientnetv2_l")
    p.add_argument("--pretrained", default="none", help="random init by default")
    p.add_argument("--image_size", type=int, default=480)
    p.add_argument("--min_size", type=int, default=64)
    p.add_argument("--batch_p", type=int, default=16)
    p.add_argument("--batch_k", type=int, default=4)
    p.add_argument("--batches", type=int, default=40, help="timed batches per measurement")
    p.add_argument("--warmup", type=int, default=8, help="untimed batches first")
    p.add_argument("--num_workers", type=int, default=None)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--frozen_stages", type=int, default=0, help="also time this many frozen")
    p.add_argument("--out", default=None, help="write the result as JSON here")
    return p.parse_args(argv)


def measure(session, batches, *, count: int, warmup: int, epoch: int) -> float:
    """images/s of ``train_one_epoch`` over ``count`` batches after ``warmup`` batches."""
    from retrieval.training.loop import StepSettings, train_one_epoch

    module = session._step_module(backbone_trainable=True)
    for n in (warmup, count):
        settings = StepSettings(
            plan=session.plan,
            accum_steps=session.accum_steps,
            device=session.device,
            input_norm=session.model.input_norm,
            progress=False,
            max_batches=n,
        )
        stats = train_one_epoch(
            module,
            batches,
            optimizer=session.optimizer,
            scaler=session.scaler,
            schedule=session.schedule,
            epoch=epoch,
            settings=settings,
        )
    return stats.images_per_s


def synthetic_batches(session, count: int):
    """A fixed on-device batch repeated: no input pipeline at all."""
    import torch

    t = session.cfg.train
    n, size = t.batch_p * t.batch_k, session.cfg.data.image_size
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, device=session.device)
    labels = torch.arange(n, device=session.device) // t.batch_k
    return [(images, labels)] * count


def main(argv: list[str] | None = None) -> int:
    prepare_environment()
    args = parse_args(argv)
    import torch

    from retrieval.config import build_run_config, resolve_batch
    from retrieval.training.distributed import DistContext
    from retrieval.training.run import make_plan, prepare
    from retrieval.training.trainer import TrainingSession

    workdir = Path(tempfile.mkdtemp(prefix="bench_throughput_"))
    values = {
        "data": args.data,
        "backbone": args.backbone,
        "pretrained": args.pretrained,
        "image_size": args.image_size,
        "min_size": args.min_size,
        "batch_p": args.batch_p,
        "batch_k": args.batch_k,
        "warmup_epochs": 0,
        "compile": args.compile,
        "num_workers": args.num_workers,
    }
    cfg = build_run_config({k: v for k, v in values.items() if v is not None}, workdir=str(workdir))
    plan = make_plan(cfg)
    cfg = resolve_batch(cfg, plan.accum_steps)
    print(plan.describe(), flush=True)
    prepared = prepare(cfg, num_workers=max(1, plan.num_workers))
    session = TrainingSession(cfg, prepared, plan, DistContext())
    session.model.set_backbone_trainable(True)
    session.head.margin_rad = cfg.loss.margin_rad
    n = args.batches + args.warmup
    bare_batches = iter(synthetic_batches(session, n))
    bare = measure(session, bare_batches, count=args.batches, warmup=args.warmup, epoch=0)
    # the training run's own batch stream: epochs follow each other without a refill stall
    real = measure(session, session.batches(1), count=args.batches, warmup=args.warmup, epoch=1)
    frozen = {}
    if args.frozen_stages:
        session.model.set_backbone_trainable(True, frozen_stages=args.frozen_stages)
        batches = iter(synthetic_batches(session, n))
        speed = measure(session, batches, count=args.batches, warmup=args.warmup, epoch=2)
        frozen = {
            "frozen_stages": args.frozen_stages,
            "bare_frozen_images_per_s": round(speed, 1),
            "ratio_bare_frozen_over_bare": round(speed / bare, 3),
        }
    result = {
        "device": plan.device,
        "plan": plan.describe(),
        "backbone": args.backbone,
        "image_size": args.image_size,
        "batch": args.batch_p * args.batch_k,
        "train_images": len(prepared.train),
        "batches_per_epoch": len(session.sampler),
        "bare_images_per_s": round(bare, 1),
        "real_images_per_s": round(real, 1),
        "ratio_real_over_bare": round(real / bare, 3),
        **frozen,
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if plan.device == "cuda"
        else None,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
