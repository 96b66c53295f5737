"""Inlier counts between queries and their shortlisted gallery photos (retrieval.local).

Gallery keypoints are a cache beside the gallery (``<gallery>/local_features.npz``, and
``local_features.saliency.npz`` for keypoints kept on the backbone's foreground estimate). Plain
keypoints depend on the photo and the extraction settings, not on the model, so a retrained
model reuses them; those kept on a saliency mask belong to the model that drew it. A photo is
extracted the first time a shortlist names it, so the cost grows with the shortlist, not with
the gallery; enrolment and removal drop the entries of their photos from every store.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.errors import InputError
from retrieval.local.features import ForegroundEstimate, LocalFeatures, LocalSettings
from retrieval.local.matching import GEOMETRIES
from retrieval.local.pool import extract_many, match_many, match_many_ways
from retrieval.local.store import (
    STORE_GLOB,
    load_local_features,
    remove_local_features,
    save_local_features,
    store_name,
)
from retrieval.serving.fusion import GEOMETRY, Fusion


def extract_photos(
    paths: Sequence[str],
    settings: LocalSettings,
    foreground: ForegroundEstimate | None,
    *,
    progress: bool = True,
) -> list[LocalFeatures]:
    """Keypoints of ``paths`` as ``settings`` say, on ``foreground``'s masks where they ask
    for a foreground estimate (an InputError names the fix when there is none to draw it)."""
    masks = None
    if settings.foreground != "none":
        if foreground is None:
            raise InputError(
                f"this gallery's local matching keeps keypoints on the {settings.foreground} "
                "foreground of the PyTorch model, which is not loaded (--onnx); search "
                "without --onnx, or with --local_match off"
            )
        masks = foreground.masks(list(paths))
    return extract_many(list(paths), settings=settings, foregrounds=masks, progress=progress)


def store_key(settings: LocalSettings, foreground: ForegroundEstimate | None = None) -> str:
    """What a keypoint cache is valid for: the extraction settings, and for keypoints kept on
    a foreground estimate, what drew it (the model)."""
    key = f"rootsift:{settings.max_keypoints}:{settings.work_size}"
    if settings.foreground == "none":
        return key
    return f"{key}:{settings.foreground}:{foreground.key if foreground else ''}"


@dataclass(frozen=True)
class LocalScorer:
    """Matches queries against gallery photos, keeping gallery keypoints in ``root``.

    ``foreground`` draws the masks that ``settings.foreground`` asks for (the workspace's
    model); unused, and may be None, when the settings keep every keypoint.
    """

    root: Path  # the gallery folder
    settings: LocalSettings
    geometry: str = GEOMETRY
    progress: bool = True
    foreground: ForegroundEstimate | None = None

    @classmethod
    def for_fusion(
        cls,
        root: Path,
        fusion: Fusion,
        *,
        foreground: ForegroundEstimate | None = None,
        progress: bool = True,
    ) -> LocalScorer:
        """A scorer with the extraction settings and geometry val chose with ``fusion``."""
        return cls(
            Path(root),
            fusion.settings,
            geometry=fusion.geometry,
            progress=progress,
            foreground=foreground,
        )

    @property
    def store(self) -> Path:
        return Path(self.root) / store_name(self.settings)

    @property
    def _key(self) -> str:
        return store_key(self.settings, self.foreground)

    def _extract(self, paths: Sequence[str]) -> list[LocalFeatures]:
        return extract_photos(paths, self.settings, self.foreground, progress=self.progress)

    def gallery_features(self, paths: Sequence[str]) -> list[LocalFeatures]:
        """Keypoints of ``paths`` from the cache, extracting (and caching) the missing ones."""
        cached = self._cached()
        missing = sorted({p for p in paths if p not in cached})
        if missing:
            found = self._extract(missing)
            cached.update(zip(missing, found, strict=True))
            self.root.mkdir(parents=True, exist_ok=True)
            save_local_features(
                self.store,
                list(cached.values()),
                fingerprint=self._key,
                image_paths=list(cached),
                settings=self.settings,
            )
        return [cached[p] for p in paths]

    def _cached(self) -> dict[str, LocalFeatures]:
        """The cache as {path: keypoints}; one made with other settings, or damaged, is
        started again (it is only a cache)."""
        if not self.store.is_file():
            return {}
        try:
            store = load_local_features(self.store, fingerprint=self._key)
        except InputError as err:
            print(f"note: keypoint cache started again ({err})")
            return {}
        return dict(zip(store.image_paths, store.features, strict=True))

    def query_features(self, paths: Sequence[str]) -> list[LocalFeatures]:
        return self._extract(paths)

    def inliers(
        self, queries: Sequence[LocalFeatures], hit_paths: Sequence[Sequence[str]], shortlist: int
    ) -> np.ndarray:
        """(Q, B) int32 verified inliers of each query with its first B hits (0 past the
        hits a row has). ``hit_paths``: per query, gallery paths best first ("" = no hit)."""
        return self.inliers_ways(queries, hit_paths, shortlist, (self.geometry,))[self.geometry]

    def inliers_ways(
        self,
        queries: Sequence[LocalFeatures],
        hit_paths: Sequence[Sequence[str]],
        shortlist: int,
        geometries: tuple[str, ...] = GEOMETRIES,
    ) -> dict[str, np.ndarray]:
        """``inliers`` under each of ``geometries`` from one matching of each pair."""
        b = min(shortlist, max((len(row) for row in hit_paths), default=0))
        wanted = sorted({p for row in hit_paths for p in row[:b] if p})
        gallery = self.gallery_features(wanted)
        column = {p: i for i, p in enumerate(wanted)}
        cells = [(q, j) for q, row in enumerate(hit_paths) for j, p in enumerate(row[:b]) if p]
        pairs = np.array([(q, column[hit_paths[q][j]]) for q, j in cells], np.int64)
        out = {g: np.zeros((len(hit_paths), b), np.int32) for g in geometries}
        if not cells:
            return out
        ways = match_many_ways(
            queries, gallery, pairs, geometries=geometries, progress=self.progress
        )
        rows, cols = np.array(cells).T
        for geometry, matches in ways.items():
            out[geometry][rows, cols] = [m.inliers for m in matches]
        return out


def fused_pair_matrix(
    scorer: LocalScorer, similarity: np.ndarray, paths: Sequence[str], fusion: Fusion
) -> np.ndarray:
    """The pairs mode on the fused scale: every image matched with its own first B neighbours
    among the pair images (each unordered pair once, so the result stays symmetric); other
    pairs keep their global probability. similarity: (N, N) cosines of ``paths``."""
    n = len(paths)
    fused = fusion.global_probability(similarity)
    b = min(fusion.shortlist, n - 1)
    if b < 1:
        return fused
    others = np.where(np.eye(n, dtype=bool), -np.inf, similarity)
    nearest = np.argsort(-others, axis=1, kind="stable")[:, :b]
    pairs = np.array(sorted({(min(a, c), max(a, c)) for a in range(n) for c in nearest[a]}))
    features = scorer.query_features(paths)
    matches = match_many(
        features, features, pairs, geometry=scorer.geometry, progress=scorer.progress
    )
    inliers = np.array([m.inliers for m in matches])
    rows, cols = pairs[:, 0], pairs[:, 1]
    values = fusion.fuse(similarity[rows, cols], inliers)
    fused[rows, cols] = fused[cols, rows] = values
    return fused


def forget_photos(root: Path, paths: Collection[str]) -> None:
    """Drop cached keypoints of these photos (enrolled again or removed) from every store of
    the gallery: a changed file is extracted afresh the next time a shortlist names it."""
    if not paths:
        return
    for store in sorted(Path(root).glob(STORE_GLOB)):
        try:
            key = str(np.load(store, allow_pickle=False)["fingerprint"])
            remove_local_features(store, fingerprint=key, image_paths=paths)
        except (InputError, OSError, KeyError, ValueError):
            store.unlink(missing_ok=True)  # a damaged cache is rebuilt on demand


@dataclass(frozen=True)
class LocalQueries:
    """The query photos of a search, for the gallery's local-match fusion to re-score with."""

    paths: Sequence[str]
    root: Path  # the gallery folder, where gallery keypoints are cached
    progress: bool = True
    foreground: ForegroundEstimate | None = None  # the workspace's, for a saliency fusion

    def scorer(self, fusion: Fusion) -> LocalScorer:
        return LocalScorer.for_fusion(
            self.root, fusion, foreground=self.foreground, progress=self.progress
        )
