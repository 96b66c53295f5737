"""The demo's spotted coats photographed by fixed camera traps: every individual walks past the
same few sites, so different individuals share one background, pixel for pixel.

This is the case the issue's field set showed (shared waterhole backgrounds: inlier counts of
true and false pairs overlapped, median 11 both): keypoints on the scenery match between photos
of different animals as well as the coat does between photos of one. The coats, poses, light
and occluders are the demo generator's own (``retrieval.data.demo_images``); only the
background is replaced by one of ``--sites`` fixed scenes, never shifted between shots.

    python bench/camera_trap_data.py --out runs/trap/data
    python train.py --fresh --preset demo --data runs/trap/data --workdir runs/trap/work
    python bench/local_bench.py --workdir runs/trap/work --foreground none
    python bench/local_bench.py --workdir runs/trap/work --foreground saliency
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retrieval.data.demo_images import draw_animal, render_shot, sample_scene, stream_rng

_SITE_STREAM = 1_000_000  # random streams of the sites, apart from the individuals' own


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder to write data/{individual}/*.jpg to")
    p.add_argument("--individuals", type=int, default=24)
    p.add_argument("--encounters", type=int, default=10, help="visits per individual")
    p.add_argument("--shots", type=int, default=2, help="burst shots per visit")
    p.add_argument("--sites", type=int, default=4, help="camera sites shared by all")
    p.add_argument("--size", type=int, default=224, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    return p


def site_backgrounds(sites: int, size: int, seed: int) -> list:
    """One fixed scene per site, exactly ``size`` pixels wide: ``render_shot`` then has no
    margin to shift it by, as a camera bolted to a tree has none."""
    scenes = []
    for k in range(sites):
        wide = sample_scene(stream_rng(seed, _SITE_STREAM + k), size)["background"]
        left = (wide.width - size) // 2
        scenes.append(wide.crop((left, left, left + size, left + size)))
    return scenes


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        print(f"error: {out} is not empty; pass an empty or new folder with --out")
        return 2
    backgrounds = site_backgrounds(args.sites, args.size, args.seed)
    total = args.individuals * args.encounters * args.shots
    width = max(2, len(str(args.individuals - 1)))
    with tqdm(total=total, desc="camera-trap data", unit="img") as bar:
        for i in range(args.individuals):
            name = f"ind_{i:0{width}d}"
            (out / name).mkdir(parents=True)
            animal = draw_animal(stream_rng(args.seed, i))
            for e in range(args.encounters):
                rng = stream_rng(args.seed, i, e + 1)
                scene = sample_scene(rng, args.size)
                scene["background"] = backgrounds[int(rng.integers(args.sites))]
                for s in range(args.shots):
                    image = render_shot(animal, scene, rng, size=args.size)
                    image.save(out / name / f"{name}-e{e:02d}_{s}.jpg", quality=90)
                    bar.update(1)
    print(f"wrote {total} photos of {args.individuals} individuals at {args.sites} sites to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
