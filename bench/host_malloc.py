"""CPU training step with glibc's default heap against the kept heap (retrieval.host_memory).

Each setting runs in its own interpreter (the setting is process-wide), back to back in one
invocation, on the same model, batch and optimiser: ``build_embedding_model`` with random
weights, BatchNorm frozen as training does, AdamW, a batch of random images. Reports seconds,
page faults and kernel time per step, the peak resident memory, and the ratios.

    python bench/host_malloc.py                       # lite0, 64 images at 224 px
    python bench/host_malloc.py --backbone tf_efficientnet_lite1 --image_size 240
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SETTINGS = ("default", "kept")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--batch", type=int, default=64, help="images per step (P x K)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per setting")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def run_child(args: argparse.Namespace) -> dict:
    """Time ``args.steps`` training steps in this process under the ``args.child`` heap."""
    import resource
    import time

    import torch

    from retrieval.device import apply_runtime, plan_runtime, probe_device
    from retrieval.model.embedder import build_embedding_model, freeze_batchnorm

    plan = plan_runtime(probe_device(device="cpu"))
    apply_runtime(replace(plan, keep_host_heap=args.child == "kept"))
    torch.manual_seed(0)
    model = build_embedding_model(args.backbone, pretrained="none")
    model.train()
    freeze_batchnorm(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(args.batch, 3, args.image_size, args.image_size)
    steps = []
    for step in range(args.warmup + args.steps):
        before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        model(images).pow(2).sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        after = resource.getrusage(resource.RUSAGE_SELF)
        if step >= args.warmup:
            steps.append(
                (
                    time.perf_counter() - started,
                    after.ru_minflt - before.ru_minflt,
                    after.ru_stime - before.ru_stime,
                )
            )
    return {
        "setting": args.child,
        "s_per_step": statistics.median(s[0] for s in steps),
        "faults_per_step": statistics.median(s[1] for s in steps),
        "kernel_s_per_step": statistics.median(s[2] for s in steps),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,  # KiB
        "threads": plan.torch_threads,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args)))
        return 0
    from retrieval.device import prepare_environment

    prepare_environment()
    flags = sys.argv[1:] if argv is None else argv
    rows = {}
    for setting in SETTINGS:
        out = subprocess.run(
            [sys.executable, __file__, *flags, "--child", setting], capture_output=True, text=True
        )
        if out.returncode != 0:
            raise SystemExit(f"the {setting} heap run failed:\n{out.stderr}")
        rows[setting] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{args.backbone}, {args.batch} images at {args.image_size} px, forward + backward +")
    print(f"AdamW, {args.steps} timed steps, {rows['kept']['threads']} threads (medians):\n")
    print("| heap | s / step | page faults / step | kernel s / step | peak RSS GiB |")
    print("|---|---|---|---|---|")
    for setting, r in rows.items():
        print(
            f"| {setting} | {r['s_per_step']:.2f} | {r['faults_per_step']:,.0f} | "
            f"{r['kernel_s_per_step']:.2f} | {r['peak_rss_gib']:.2f} |"
        )
    default, kept = rows["default"], rows["kept"]
    print(
        f"\nstep time kept/default: {kept['s_per_step'] / default['s_per_step']:.2f}; "
        f"peak RSS kept/default: {kept['peak_rss_gib'] / default['peak_rss_gib']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
