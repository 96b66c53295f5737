"""Drawing the demo's synthetic animals and their photos (``retrieval.data.demo`` writes them).

An individual is a canonical side view whose coat layout (rosettes and spots) is its identity;
an encounter fixes pose, scene, occluder and light; each burst shot jitters all of them a
little. Only numpy Generators and PIL are used, so the same seeds give the same pixels.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

_CANVAS = (384, 256)  # canonical side view of an animal facing right, (width, height)
_SUPERSAMPLE = 2  # canonical drawings are made at this multiple, then reduced (anti-aliasing)
_COATS = ((196, 150, 84), (214, 172, 92), (168, 128, 80), (205, 182, 140))  # shared base colours
_INK = (38, 28, 20)  # colour of spots and rosette rings
_SCENES = ((88, 118, 58), (160, 146, 92), (116, 94, 70), (52, 66, 44), (128, 128, 122))
_Draw = ImageDraw.ImageDraw
_Rng = np.random.Generator


def stream_rng(seed: int, *key: int) -> np.random.Generator:
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


def draw_animal(rng: _Rng) -> Image.Image:
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


def sample_scene(rng: _Rng, size: int) -> dict:
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


def render_shot(animal: Image.Image, scene: dict, rng: _Rng, *, size: int) -> Image.Image:
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
