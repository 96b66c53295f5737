"""The keypoint store kept beside a gallery: gallery photos' keypoints, extracted once.

One ``.npz`` holds every photo's keypoints concatenated, with offsets, the image paths, the
extraction settings, a format version and the gallery's fingerprint, so a store built for
another model or another gallery is refused rather than silently matched against. Enrolment
and removal rewrite it from what is stored plus the new photos, extracting nothing twice.
Descriptors are stored as float16: extraction already rounds them to that precision, so a
loaded store matches exactly as a fresh extraction does, at half the disk.
"""

from __future__ import annotations

import zipfile
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.errors import InputError
from retrieval.io import atomic_path
from retrieval.local.features import DESCRIPTOR_DIM, LocalFeatures, LocalSettings

STORE_NAME = "local_features.npz"
STORE_GLOB = "local_features*.npz"  # every store of a gallery, one per extraction setting
FORMAT_VERSION = 1
_FIX = "rebuild the gallery with --rebuild_gallery"


def store_name(settings: LocalSettings) -> str:
    """The file of the store for ``settings``: keypoints kept on a foreground estimate live
    beside the plain ones, so val can compare both and a search reads the one it uses."""
    if settings.foreground == "none":
        return STORE_NAME
    return f"local_features.{settings.foreground}.npz"


@dataclass(frozen=True, eq=False)
class LocalStore:
    """Stored keypoints of gallery photos, in the stored order."""

    features: list[LocalFeatures]
    image_paths: list[str]
    settings: LocalSettings

    def for_paths(self, paths: Sequence[str]) -> list[LocalFeatures]:
        """Features of ``paths``; a path the store lacks means it is stale: InputError."""
        index = {p: i for i, p in enumerate(self.image_paths)}
        missing = [p for p in paths if p not in index]
        if missing:
            raise InputError(
                f"the keypoint store has no keypoints for {len(missing)} gallery photo(s) "
                f"(first: {missing[0]}); {_FIX}"
            )
        return [self.features[index[p]] for p in paths]


def save_local_features(
    path: Path,
    features: Sequence[LocalFeatures],
    *,
    fingerprint: str,
    image_paths: Sequence[str],
    settings: LocalSettings,
) -> None:
    """Write the store atomically: a crash leaves the previous store or the new one."""
    if len(features) != len(image_paths):
        raise ValueError(f"{len(features)} features but {len(image_paths)} image paths")
    if len(set(image_paths)) != len(image_paths):
        raise ValueError("image paths repeat; one entry per photo")
    counts = np.array([len(f) for f in features], np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    arrays = {
        "format_version": np.array(FORMAT_VERSION),
        "fingerprint": np.array(fingerprint),
        "image_paths": np.array(list(image_paths), dtype=str),
        "max_keypoints": np.array(settings.max_keypoints),
        "work_size": np.array(settings.work_size),
        "foreground": np.array(settings.foreground),
        "sizes": np.array([(f.width, f.height) for f in features], np.int64).reshape(-1, 2),
        "offsets": offsets,
        "keypoints": _concat([f.keypoints for f in features], (0, 2), np.float32),
        "descriptors": _concat([f.descriptors for f in features], (0, DESCRIPTOR_DIM), np.float16),
    }
    with atomic_path(Path(path)) as tmp, tmp.open("wb") as handle:
        np.savez(handle, **arrays)  # a handle: np.savez would add ".npz" to the temp name


def _concat(parts: list[np.ndarray], empty_shape: tuple[int, int], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(empty_shape, dtype)


def _read(path: Path) -> dict[str, np.ndarray]:
    """Every array of the file; a missing, damaged or foreign file is an InputError."""
    if not path.is_file():
        raise InputError(f"no keypoint store at {path}; {_FIX}")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"the keypoint store {path} is damaged ({e}); {_FIX}") from None


def _unpack(data: dict[str, np.ndarray]) -> LocalStore:
    """Arrays -> a store; any inconsistency raises KeyError/ValueError for the caller."""
    paths = [str(p) for p in data["image_paths"]]
    offsets, sizes = data["offsets"].astype(np.int64), data["sizes"].astype(np.int64)
    keypoints = data["keypoints"].astype(np.float32)
    descriptors = data["descriptors"].astype(np.float32)
    n = len(paths)
    if offsets.shape != (n + 1,) or sizes.shape != (n, 2) or np.any(np.diff(offsets) < 0):
        raise ValueError("offsets or sizes do not match the image paths")
    total = int(offsets[-1]) if n else 0
    if keypoints.shape != (total, 2) or descriptors.shape != (total, DESCRIPTOR_DIM):
        raise ValueError("keypoint arrays do not match the offsets")
    features = [
        LocalFeatures(keypoints[a:b], descriptors[a:b], int(w), int(h))
        for a, b, (w, h) in zip(offsets[:-1], offsets[1:], sizes, strict=True)
    ]
    # a store written before foreground estimates kept every keypoint
    foreground = str(data["foreground"]) if "foreground" in data else "none"
    settings = LocalSettings(int(data["max_keypoints"]), int(data["work_size"]), foreground)
    return LocalStore(features, paths, settings)


def load_local_features(path: Path, *, fingerprint: str) -> LocalStore:
    """The store at ``path``, refused (InputError with the fix) when another model or gallery
    built it, when it has another format version, or when it is damaged."""
    path = Path(path)
    data = _read(path)
    try:
        version = int(data["format_version"])
        stored = str(data["fingerprint"])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{path} is not a keypoint store of this project; {_FIX}") from None
    if version != FORMAT_VERSION:
        raise InputError(
            f"the keypoint store {path} has format {version}, this version reads "
            f"{FORMAT_VERSION}; {_FIX}"
        )
    if stored != fingerprint:
        raise InputError(
            f"the keypoint store {path} was built for another gallery ({stored}, this one is "
            f"{fingerprint}); {_FIX}"
        )
    try:
        return _unpack(data)
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"the keypoint store {path} is damaged ({e}); {_FIX}") from None


def add_local_features(
    path: Path,
    features: Sequence[LocalFeatures],
    *,
    fingerprint: str,
    image_paths: Sequence[str],
    settings: LocalSettings,
) -> LocalStore:
    """Enrolment: append photos' keypoints (a path already stored is replaced) and save.

    ``settings`` must be those of the store: keypoints extracted otherwise would not be
    comparable with the rest.
    """
    store = load_local_features(path, fingerprint=fingerprint)
    if settings != store.settings:
        raise InputError(
            f"the keypoint store {path} was extracted with {store.settings}, the new photos "
            f"with {settings}; extract them with the stored settings or {_FIX}"
        )
    if len(features) != len(image_paths):
        raise ValueError(f"{len(features)} features but {len(image_paths)} image paths")
    new = dict(zip(image_paths, features, strict=True))
    kept = [(p, f) for p, f in zip(store.image_paths, store.features, strict=True) if p not in new]
    merged = kept + list(new.items())
    return _save_pairs(path, merged, fingerprint=fingerprint, settings=store.settings)


def remove_local_features(
    path: Path, *, fingerprint: str, image_paths: Collection[str]
) -> LocalStore:
    """Removal: drop these photos' keypoints (paths the store lacks are ignored) and save."""
    store = load_local_features(path, fingerprint=fingerprint)
    drop = set(image_paths)
    kept = [(p, f) for p, f in zip(store.image_paths, store.features, strict=True) if p not in drop]
    return _save_pairs(path, kept, fingerprint=fingerprint, settings=store.settings)


def _save_pairs(
    path: Path,
    pairs: list[tuple[str, LocalFeatures]],
    *,
    fingerprint: str,
    settings: LocalSettings,
) -> LocalStore:
    paths = [p for p, _ in pairs]
    features = [f for _, f in pairs]
    save_local_features(
        path, features, fingerprint=fingerprint, image_paths=paths, settings=settings
    )
    return LocalStore(features, paths, settings)
