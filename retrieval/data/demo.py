"""A seeded synthetic re-identification data set, so the demo preset runs with no download.

SPEC 7.1: ``train.py --fresh --preset demo`` must train end to end on data the project makes
itself. Each class is one synthetic spotted "animal" whose identity lies in its own coat
layout (rosettes and spots), not in its colour: a few base coats are shared by many
individuals. Each encounter (one group, SPEC 1.1) is one pose, background, occluder and light;
its shots are burst shots with small jitter, so a group never has to cross splits.

The pixels come from ``retrieval.data.demo_images`` (one seeded Generator per individual /
encounter), so the same spec gives the same images. The folder is written to a temporary
sibling and renamed into place; a marker holding the spec is written last, so a crashed run
is detected and redone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from retrieval.data.demo_images import draw_animal, render_shot, sample_scene, stream_rng
from retrieval.errors import InputError

MARKER_NAME = ".demo_complete"
README_NAME = "README.txt"
GENERATOR_VERSION = 1  # bump when the images change, so old folders are regenerated

_INDIVIDUAL_DIR = re.compile(r"ind_\d+")


@dataclass(frozen=True)
class DemoSpec:
    """How many synthetic individuals, encounters and shots to make, at what size.

    224 px passes SPEC 1.6's default minimum size (training may resize down to 128-160 px).
    10 encounters leave ~7 per individual for training after a 70/15/15 group split; with 4
    a fine-tuned lite0 memorises the scenes instead of the coats.
    """

    n_individuals: int = 24
    encounters_per_individual: int = 10
    shots_per_encounter: int = 2
    image_size: int = 224
    seed: int = 0

    def __post_init__(self) -> None:
        limits = {
            "n_individuals": (2, 10_000),
            "encounters_per_individual": (1, 99),
            "shots_per_encounter": (1, 99),
            "image_size": (32, 2048),
            "seed": (0, 2**63 - 1),
        }
        for name, (low, high) in limits.items():
            value = getattr(self, name)
            if not isinstance(value, int) or not low <= value <= high:
                raise InputError(
                    f"DemoSpec.{name}={value!r}: must be an integer in [{low}, {high}]; "
                    "pass a value in that range"
                )


def make_demo_dataset(root: Path, spec: DemoSpec = DemoSpec(), *, progress: bool = True) -> Path:
    """Write the demo data set to ``root`` (unless it is already there) and return ``root``.

    Layout: ``root/ind_NN/ind_NN-eEE_S.jpg`` (class ``ind_NN``, group ``ind_NN-eEE``), plus
    ``README.txt`` and the marker. Idempotent: a complete folder for the same spec is left
    untouched. A folder without the marker (a crash) or for another spec is rebuilt; a folder
    that does not look like a demo data set is refused rather than deleted.
    """
    root = Path(root).resolve()
    if is_complete_demo(root, spec):
        return root
    _check_replaceable(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write_images(tmp, spec, progress=progress)
        (tmp / README_NAME).write_text(_readme(spec), encoding="utf-8")
        (tmp / MARKER_NAME).write_text(json.dumps(_marker(spec), indent=2), encoding="utf-8")
        if not is_complete_demo(root, spec):  # unless a concurrent call finished first
            if root.exists():
                shutil.rmtree(root)
            os.replace(tmp, root)
    except OSError:
        if not is_complete_demo(root, spec):  # another process may have won the rename
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def is_complete_demo(root: Path, spec: DemoSpec) -> bool:
    """True when ``root`` holds a fully written demo data set made from ``spec``."""
    marker = Path(root) / MARKER_NAME
    try:
        return json.loads(marker.read_text(encoding="utf-8")) == _marker(spec)
    except (OSError, ValueError):
        return False


def _marker(spec: DemoSpec) -> dict[str, int]:
    return {**dataclasses.asdict(spec), "generator_version": GENERATOR_VERSION}


def _check_replaceable(root: Path) -> None:
    """Refuse to delete a folder that is not ours: only demo leftovers may be replaced."""
    if not root.exists():
        return
    if not root.is_dir():
        raise InputError(f"demo data folder {root} is a file; pass a folder path or remove it")
    allowed = {README_NAME, MARKER_NAME}
    foreign = [
        p.name
        for p in root.iterdir()
        if p.name not in allowed and not (p.is_dir() and _INDIVIDUAL_DIR.fullmatch(p.name))
    ]
    if foreign:
        raise InputError(
            f"demo data folder {root} exists and holds {foreign[0]!r}, which the demo generator "
            "did not write; choose another folder for the demo data or empty this one"
        )


def _readme(spec: DemoSpec) -> str:
    fields = ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(spec).items())
    return (
        "Synthetic demo data set for the retrieval classifier (SPEC 7.1), made by\n"
        "retrieval.data.demo.make_demo_dataset. Not real animals: each class ind_NN is one\n"
        "synthetic spotted animal whose identity is its own rosette/spot layout; base coat\n"
        "colours are shared between individuals, so colour alone does not identify them.\n"
        "File names: ind_NN/ind_NN-eEE_S.jpg; the group ID ind_NN-eEE is one encounter\n"
        "(pose, background, occluder, light) and S its burst shots.\n"
        f"Seed: {spec.seed}\nSpec: {fields}, generator_version={GENERATOR_VERSION}\n"
        "Delete this folder to regenerate it; the same spec gives the same images.\n"
    )


def _write_images(folder: Path, spec: DemoSpec, *, progress: bool) -> None:
    total = spec.n_individuals * spec.encounters_per_individual * spec.shots_per_encounter
    width = max(2, len(str(spec.n_individuals - 1)))
    with tqdm(total=total, desc="demo data", unit="img", disable=not progress) as bar:
        for i in range(spec.n_individuals):
            name = f"ind_{i:0{width}d}"
            (folder / name).mkdir()
            animal = draw_animal(stream_rng(spec.seed, i))
            for e in range(spec.encounters_per_individual):
                rng = stream_rng(spec.seed, i, e + 1)
                scene = sample_scene(rng, spec.image_size)
                for s in range(spec.shots_per_encounter):
                    image = render_shot(animal, scene, rng, size=spec.image_size)
                    image.save(folder / name / f"{name}-e{e:02d}_{s}.jpg", quality=90)
                    bar.update(1)
