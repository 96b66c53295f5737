"""A seeded synthetic re-identification data set, so the demo preset runs with no download.

SPEC 7.1: ``train.py --fresh --preset demo`` must train end to end on data the project makes
itself. Each class is one synthetic spotted "animal" whose identity lies in its own coat
layout (rosettes and spots), not in its colour: a few base coats are shared by many
individuals. Each encounter (one group, SPEC 1.1) is one pose, background, occluder and light;
its shots are burst shots with small jitter, so a group never has to cross splits.

Only numpy (one explicit Generator per individual / encounter) and PIL are used, so the same
spec gives the same images. The folder is written to a temporary sibling and renamed into
place; a marker holding the spec is written last, so a crashed run is detected and redone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from retrieval.errors import InputError

MARKER_NAME = ".demo_complete"
README_NAME = "README.txt"
GENERATOR_VERSION = 1  # bump when the images change, so old folders are regenerated

_CANVAS = (384, 256)  # canonical side view of an animal facing right, (width, height)
_SUPERSAMPLE = 2  # canonical drawings are made at this multiple, then reduced (anti-aliasing)
_COATS = ((196, 150, 84), (214, 172, 92), (168, 128, 80), (205, 182, 140))  # shared base colours
_INK = (38, 28, 20)  # colour of spots and rosette rings
_SCENES = ((88, 118, 58), (160, 146, 92), (116, 94, 70), (52, 66, 44), (128, 128, 122))
_INDIVIDUAL_DIR = re.compile(r"ind_\d+")
_Draw = ImageDraw.ImageDraw
_Rng = np.random.Generator


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
            animal = _draw_animal(_rng(spec.seed, i))
            for e in range(spec.encounters_per_individual):
                rng = _rng(spec.seed, i, e + 1)
                scene = _sample_scene(rng, spec.image_size)
                for s in range(spec.shots_per_encounter):
                    image = _render_shot(animal, scene, rng, size=spec.image_size)
                    image.save(folder / name / f"{name}-e{e:02d}_{s}.jpg", quality=90)
                    bar.update(1)


def _rng(seed: int, *key: int) -> np.random.Generator:
    """Independent stream per (individual[, encounter]): changing counts keeps the others."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _uniform(rng: _Rng, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def _jitter(
    rng: _Rng, colour: tuple[int, ...], amount: float, tint: float = 6.0
) -> tuple[int, ...]:
    """A nearby colour: mostly lighter/darker (``amount``), slightly hue-shifted (``tint``)."""
    shade = rng.normal(0.0, amount)
    return tuple(min(255, max(0, int(c + shade + rng.normal(0.0, tint)))) for c in colour)


# --- the animal: canonical side view with its own coat -------------------------------------


def _draw_animal(rng: _Rng) -> Image.Image:
    """One individual, RGBA on the canonical canvas; alpha is the body silhouette."""
    k = _SUPERSAMPLE
    size = (_CANVAS[0] * k, _CANVAS[1] * k)
    coat = _jitter(rng, _COATS[int(rng.integers(len(_COATS)))], 6.0, 4.0)
    mask = Image.new("L", size, 0)
    _draw_body(ImageDraw.Draw(mask), rng, scale=k, fill=255)
    colour = Image.new("RGB", size, coat)
    belly = Image.new("L", size, 0)
    ImageDraw.Draw(belly).ellipse([60 * k, 140 * k, 300 * k, 260 * k], fill=150)
    belly = belly.filter(ImageFilter.GaussianBlur(14 * k))
    colour.paste(Image.new("RGB", size, _jitter(rng, (236, 222, 196), 5.0)), mask=belly)
    _draw_coat(ImageDraw.Draw(colour), rng, np.asarray(mask) > 0, scale=k, coat=coat)
    animal = colour.convert("RGBA")
    animal.putalpha(mask)
    return animal.resize(_CANVAS, Image.Resampling.LANCZOS)


def _draw_body(draw: _Draw, rng: _Rng, *, scale: int, fill: int) -> None:
    """Silhouette: torso, neck, head, ears, legs, tail; mild per-individual proportions."""

    def box(cx: float, cy: float, rx: float, ry: float) -> list[float]:
        return [(cx - rx) * scale, (cy - ry) * scale, (cx + rx) * scale, (cy + ry) * scale]

    length, height = _uniform(rng, 0.92, 1.05), _uniform(rng, 0.9, 1.08)
    draw.ellipse(box(185, 122, 112 * length, 48 * height), fill=fill)
    neck = [(250, 95), (292, 78), (312, 110), (268, 150)]
    draw.polygon([(x * scale, y * scale) for x, y in neck], fill=fill)
    draw.ellipse(box(305, 92, 33, 28), fill=fill)
    draw.ellipse(box(333, 104, 17, 13), fill=fill)
    for ex in (292, 314):
        draw.ellipse(box(ex, 66, 9, 10), fill=fill)
    leg_top = 122 + 20 * height
    for lx in (98, 128, 232, 260):
        lx += rng.normal(0, 3)
        foot = lx + rng.normal(0, 6)
        leg = [(lx - 12, leg_top), (lx + 12, leg_top), (foot + 9, 236), (foot - 9, 236)]
        draw.polygon([(x * scale, y * scale) for x, y in leg], fill=fill)
        draw.ellipse(box(foot + 2, 237, 12, 7), fill=fill)
    bend = _uniform(rng, -40, 50)
    for t in np.linspace(0.0, 1.0, 40):  # tail: a thick quadratic Bezier of discs
        x = (1 - t) ** 2 * 82 + 2 * (1 - t) * t * 30 + t**2 * 18
        y = (1 - t) ** 2 * 112 + 2 * (1 - t) * t * (150 + bend) + t**2 * (200 - bend)
        draw.ellipse(box(x, y, 9 - 3 * t, 9 - 3 * t), fill=fill)


def _draw_coat(draw: _Draw, rng: _Rng, inside: np.ndarray, *, scale: int, coat: tuple) -> None:
    """The identity: a coat style (spot size, spacing, rosette share) and a unique layout."""
    ys, xs = np.nonzero(inside[:: 4 * scale, :: 4 * scale])
    points = np.stack([xs, ys], axis=1).astype(float) * 4 + 2  # canonical pixel centres
    rng.shuffle(points)
    centre_ink = tuple(int(c * 0.72) for c in coat)
    spot_scale, spacing = _uniform(rng, 0.6, 1.5), _uniform(rng, 0.5, 6.0)
    rosette_share, elongation = _uniform(rng, 0.2, 0.95), _uniform(rng, 1.0, 1.8)
    placed, radii = np.empty((len(points), 2)), np.empty(len(points))
    count = 0
    for p in points:
        on_torso = 70 < p[0] < 290 and p[1] < 170
        radius = spot_scale * (_uniform(rng, 6, 14) if on_torso else _uniform(rng, 2.5, 5))
        gaps = np.hypot(*(placed[:count] - p).T) - 1.1 * (radii[:count] + radius)
        if count and gaps.min() < spacing:
            continue
        placed[count], radii[count] = p, radius
        count += 1
        if on_torso and rng.random() < rosette_share:
            _rosette(draw, rng, p * scale, radius * scale, centre_ink)
        else:
            rx = radius * _uniform(rng, 0.6, 1.0) * elongation
            ry = radius * _uniform(rng, 0.6, 1.0) / elongation
            draw.ellipse(_box(p * scale, rx * scale, ry * scale), fill=_INK)


def _rosette(draw: _Draw, rng: _Rng, centre: np.ndarray, radius: float, ink: tuple) -> None:
    """A jaguar-like rosette: a darker centre ringed by broken dark blotches."""
    draw.ellipse(_box(centre, radius * 0.8, radius * 0.8), fill=ink)
    n = int(rng.integers(4, 8))
    start = _uniform(rng, 0, 2 * np.pi)
    for j in range(n):
        if rng.random() < 0.2:
            continue  # broken ring
        angle = start + 2 * np.pi * j / n
        p = centre + radius * np.array([np.cos(angle), np.sin(angle)])
        draw.ellipse(_box(p, radius * _uniform(rng, 0.25, 0.45), radius * 0.3), fill=_INK)
    if rng.random() < 0.5:
        draw.ellipse(_box(centre, radius * 0.15, radius * 0.15), fill=_INK)


def _box(centre: np.ndarray, rx: float, ry: float) -> list[float]:
    return [centre[0] - rx, centre[1] - ry, centre[0] + rx, centre[1] + ry]


# --- one encounter: pose, scene, light; one shot: small jitter of all of them ---------------


def _sample_scene(rng: _Rng, size: int) -> dict:
    """Everything that one encounter's burst shots share."""
    return {
        "angle_deg": _uniform(rng, -20, 20),
        "scale": _uniform(rng, 0.8, 1.2) * size / _CANVAS[0],
        "squash": _uniform(rng, 0.85, 1.1),  # foreshortening of the body length
        "shear": _uniform(rng, -0.15, 0.15),
        "shift": rng.uniform(-0.12, 0.12, size=2) * size,
        "background": _background(rng, int(size * 1.1)),
        "occluder": rng.integers(1 << 31) if rng.random() < 0.5 else None,
        "light": _sample_light(rng),
    }


def _sample_light(rng: _Rng) -> dict:
    return {
        "brightness": _uniform(rng, 0.65, 1.3),
        "contrast": _uniform(rng, 0.7, 1.2),
        "cast": rng.uniform(0.85, 1.15, size=3),
        "gradient": _uniform(rng, 0.0, 0.45),
        "gradient_angle": _uniform(rng, 0, 2 * np.pi),
        "blur": _uniform(rng, 0.0, 0.8) if rng.random() < 0.3 else 0.0,
    }


def _background(rng: _Rng, size: int) -> Image.Image:
    """Clutter that carries no identity: smooth noise, blobs, grass strokes, dark litter."""
    base = np.array(_jitter(rng, _SCENES[int(rng.integers(len(_SCENES)))], 10.0), dtype=float)
    coarse = rng.normal(0.0, 22.0, size=(6, 6, 1)) + rng.normal(0.0, 8.0, size=(6, 6, 3))
    smooth = Image.fromarray(np.clip(base + coarse, 0, 255).astype(np.uint8), "RGB")
    image = smooth.resize((size, size), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(6, 16))):
        c, r = rng.uniform(0, size, 2), rng.uniform(0.03, 0.15, 2) * size
        draw.ellipse(_box(c, *r), fill=_jitter(rng, tuple(base), 25.0, 10.0))
    image = image.filter(ImageFilter.GaussianBlur(size / 80))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(40, 160))):
        x, y = rng.uniform(0, size, 2)
        dx, dy = rng.normal(0, 0.02) * size, -_uniform(rng, 0.03, 0.12) * size
        width = max(1, round(size / 160 * _uniform(rng, 0.6, 1.8)))
        draw.line([x, y, x + dx, y + dy], fill=_jitter(rng, tuple(base), 30.0, 10.0), width=width)
    for _ in range(int(rng.integers(0, 12))):
        c = rng.uniform(0, size, 2)
        draw.ellipse(_box(c, *(rng.uniform(0.005, 0.02, 2) * size)), fill=_jitter(rng, _INK, 15))
    return image


def _render_shot(animal: Image.Image, scene: dict, rng: _Rng, *, size: int) -> Image.Image:
    """One burst shot: the encounter's pose and light with small per-shot jitter, as RGB."""
    margin = scene["background"].width - size
    ox, oy = rng.integers(0, margin + 1, size=2)
    image = scene["background"].crop((ox, oy, ox + size, oy + size))
    scale = scene["scale"] * _uniform(rng, 0.96, 1.04)
    small = animal.resize(
        (max(1, round(_CANVAS[0] * scale)), max(1, round(_CANVAS[1] * scale))),
        Image.Resampling.LANCZOS,
    )
    warped = _warp(small, scene, rng, size=size)
    shadow = warped.getchannel("A").filter(ImageFilter.GaussianBlur(size / 40))
    cast = Image.new("L", shadow.size, 0)
    cast.paste(shadow.point(lambda v: v * 0.6), (0, round(size / 40)))  # a little below
    image = Image.composite(Image.eval(image, lambda v: int(v * 0.6)), image, cast)
    image.paste(warped.convert("RGB"), mask=warped.getchannel("A"))
    if scene["occluder"] is not None:
        _draw_occluder(image, np.random.default_rng(scene["occluder"]), rng)
    return _apply_light(image, scene["light"], rng)


def _warp(small: Image.Image, scene: dict, rng: _Rng, *, size: int) -> Image.Image:
    """Place the animal: rotation, shear, squash and translation about the image centre."""
    angle = np.deg2rad(scene["angle_deg"] + rng.normal(0, 2.0))
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    forward = rot @ np.array([[1.0, scene["shear"]], [0.0, 1.0]]) @ np.diag([scene["squash"], 1])
    centre_out = size / 2 + scene["shift"] + rng.normal(0, 0.02 * size, 2)
    centre_in = np.array(small.size) / 2
    inverse = np.linalg.inv(forward)  # PIL maps output pixels back to input pixels
    offset = centre_in - inverse @ centre_out
    coeffs = (*inverse[0], offset[0], *inverse[1], offset[1])
    return small.transform((size, size), Image.Transform.AFFINE, coeffs, Image.Resampling.BICUBIC)


def _draw_occluder(image: Image.Image, shape_rng: _Rng, shot_rng: _Rng) -> None:
    """A branch with leaves, or a rock, in front of the animal; shared by a burst."""
    size = image.width
    draw = ImageDraw.Draw(image)
    wobble = shot_rng.normal(0, 0.01 * size, 2)
    if shape_rng.random() < 0.6:
        ends = shape_rng.uniform(0, size, (2, 2))
        ends[:, int(shape_rng.integers(2))] = (0, size)  # from edge to edge
        points = [tuple(p + wobble) for p in ends]
        width = max(2, round(size * _uniform(shape_rng, 0.02, 0.05)))
        draw.line(points, fill=_jitter(shape_rng, (92, 70, 48), 15.0), width=width)
        leaf = _jitter(shape_rng, (60, 96, 44), 15.0)
        for t in shape_rng.uniform(0, 1, int(shape_rng.integers(3, 12))):
            c = ends[0] + t * (ends[1] - ends[0]) + wobble + shape_rng.normal(0, 0.04 * size, 2)
            draw.ellipse(_box(c, *(shape_rng.uniform(0.02, 0.05, 2) * size)), fill=leaf)
    else:
        c = shape_rng.uniform(0.2, 0.8, 2) * size + wobble
        c[1] = max(c[1], 0.6 * size)
        r = shape_rng.uniform(0.08, 0.2, 2) * size
        draw.ellipse(_box(c, *r), fill=_jitter(shape_rng, (120, 116, 108), 20.0))
        draw.ellipse(_box(c - r * 0.3, *(r * 0.4)), fill=_jitter(shape_rng, (150, 146, 138), 10))


def _apply_light(image: Image.Image, light: dict, rng: _Rng) -> Image.Image:
    """Brightness, contrast, colour cast, a shading gradient, blur and sensor noise."""
    if light["blur"] > 0:
        image = image.filter(ImageFilter.GaussianBlur(light["blur"] * image.width / 160))
    pixels = np.asarray(image, dtype=np.float32)
    mean = pixels.mean()
    pixels = (pixels - mean) * light["contrast"] + mean
    pixels *= light["brightness"] * _uniform(rng, 0.95, 1.05)
    pixels *= light["cast"].astype(np.float32)
    size = image.width
    axis = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    a = light["gradient_angle"]
    ramp = np.cos(a) * axis[None, :] + np.sin(a) * axis[:, None]
    pixels *= (1.0 + light["gradient"] * ramp)[..., None]
    pixels += rng.normal(0.0, _uniform(rng, 1.0, 6.0), pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
