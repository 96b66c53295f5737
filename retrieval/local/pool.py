"""Keypoints of many photos and matches of many pairs, over a process pool.

SIFT and MAGSAC hold the GIL for most of their time in small calls, so threads do not scale;
processes do. Each worker runs OpenCV and BLAS on one thread (the pool is the parallelism),
and is started with ``spawn``: forking a parent that already runs torch or OpenMP threads can
hang the child. A small job runs in-process, where starting workers would cost more than it
saves. Results come back in input order, identical to in-process ones.
"""

from __future__ import annotations

import math
import multiprocessing
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from retrieval.data.images import UnreadableImage
from retrieval.device import _cpu_count
from retrieval.local.features import (
    LocalFeatures,
    LocalSettings,
    extract_local_features,
    load_for_matching,
)
from retrieval.local.matching import GEOMETRIES, LocalMatch, check_geometry, match_local_ways

MIN_IMAGES_PER_WORKER = 4  # about 0.1 s each at 512 px; a worker takes about 1 s to start
MIN_PAIRS_PER_WORKER = 64  # about 20 ms each at 1024 keypoints
_PROGRESS_FROM = {"keypoints": 30, "local matches": 600}
_CHUNKS_PER_WORKER = 8  # enough chunks for an even load and a moving progress bar

_worker_shared: dict[str, Any] = {}  # in a worker process only: what its tasks share


class _Progress:
    """tqdm on a terminal; in a log file a plain line every 10 %, not a wall of redraws."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        tty = sys.stderr.isatty()
        self.bar = tqdm(total=total, desc=desc, disable=not enabled or not tty or total == 0)
        self.plain = enabled and not tty and total > 0
        self.total, self.desc, self.done, self.next_pct = total, desc, 0, 10

    def update(self, n: int) -> None:
        self.bar.update(n)
        self.done += n
        pct = 100 * self.done // max(self.total, 1)
        if self.plain and pct >= self.next_pct:
            print(f"{self.desc}: {self.done}/{self.total} ({pct}%)", file=sys.stderr, flush=True)
            self.next_pct = (pct // 10 + 1) * 10

    def close(self) -> None:
        self.bar.close()


def _init_worker(shared: dict[str, Any]) -> None:
    """One thread per worker for OpenCV and BLAS; keep what every task of the pool needs."""
    from threadpoolctl import threadpool_limits

    cv2.setNumThreads(1)
    threadpool_limits(1)
    _worker_shared.update(shared)


def _in_worker(task: Callable[[Any, dict[str, Any]], list], chunk: Any) -> list:
    return task(chunk, _worker_shared)


def pool_size(n: int, *, workers: int | None, min_per_worker: int) -> int:
    """Workers for ``n`` tasks: at most ``workers`` (default: every core this process may
    use), and none that would get fewer than ``min_per_worker`` tasks; 1 means in-process."""
    cap = _cpu_count() if workers is None else workers
    return max(1, min(cap, n // max(1, min_per_worker)))


def _map_chunks(
    task: Callable[[Any, dict[str, Any]], list],
    items: Sequence[Any],
    shared: dict[str, Any],
    *,
    workers: int,
    desc: str,
    progress: bool,
) -> list:
    """``task(chunk, shared)`` over chunks of ``items``, results concatenated in order.

    ``shared`` goes to each worker once (its initializer), not with every chunk.
    """
    size = max(1, math.ceil(len(items) / (workers * _CHUNKS_PER_WORKER)))
    chunks = [items[a : a + size] for a in range(0, len(items), size)]
    # a bar only for jobs of more than a few seconds (about 0.1 s a photo, 5 ms a pair)
    bar = _Progress(len(items), desc, progress and len(items) >= _PROGRESS_FROM[desc])
    results: list = []
    try:
        if workers == 1:
            done: Iterable[list] = (task(chunk, shared) for chunk in chunks)
            for chunk, out in zip(chunks, done, strict=True):
                results += out
                bar.update(len(chunk))
            return results
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            workers, mp_context=context, initializer=_init_worker, initargs=(shared,)
        ) as pool:
            done = pool.map(partial(_in_worker, task), chunks)
            for chunk, out in zip(chunks, done, strict=True):
                results += out
                bar.update(len(chunk))
    finally:
        bar.close()
    return results


def _extract_chunk(
    items: list[tuple[str, np.ndarray | None]], shared: dict[str, Any]
) -> list[LocalFeatures | str]:
    """Features per (path, foreground mask), or the reason the photo is unreadable
    (exceptions with extra constructor arguments do not survive the trip back from a worker)."""
    settings: LocalSettings = shared["settings"]
    out: list[LocalFeatures | str] = []
    for path, foreground in items:
        try:
            image = load_for_matching(Path(path))
        except UnreadableImage as e:
            out.append(e.reason)
            continue
        out.append(
            extract_local_features(
                image,
                max_keypoints=settings.max_keypoints,
                work_size=settings.work_size,
                foreground=foreground,
            )
        )
    return out


def extract_many(
    paths: Sequence[Path],
    *,
    settings: LocalSettings,
    foregrounds: Sequence[np.ndarray] | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> list[LocalFeatures]:
    """Keypoints of every photo, in order, kept on ``foregrounds[i]`` where given (one mask
    per photo, ``ForegroundEstimate.masks``); an unreadable one raises ``UnreadableImage``."""
    names = [str(p) for p in paths]
    masks: Sequence[np.ndarray | None] = [None] * len(names) if foregrounds is None else foregrounds
    if len(masks) != len(names):
        raise ValueError(f"{len(masks)} foreground masks for {len(names)} photos")
    n_workers = pool_size(len(names), workers=workers, min_per_worker=MIN_IMAGES_PER_WORKER)
    results = _map_chunks(
        _extract_chunk,
        list(zip(names, masks, strict=True)),
        {"settings": settings},
        workers=n_workers,
        desc="keypoints",
        progress=progress,
    )
    for name, result in zip(names, results, strict=True):
        if isinstance(result, str):
            raise UnreadableImage(Path(name), result)
    return results


def _match_chunk(pairs: np.ndarray, shared: dict[str, Any]) -> list[list[LocalMatch]]:
    queries, gallery = shared["queries"], shared["gallery"]
    ratio, geometries = shared["ratio"], shared["geometries"]
    return [
        match_local_ways(queries[q], gallery[g], ratio=ratio, geometries=geometries)
        for q, g in pairs
    ]


def match_many(
    queries: Sequence[LocalFeatures],
    gallery: Sequence[LocalFeatures],
    pairs: np.ndarray,
    *,
    ratio: float = 0.8,
    geometry: str = "homography",
    workers: int | None = None,
    progress: bool = True,
) -> list[LocalMatch]:
    """``match_local(queries[q], gallery[g])`` for each row (q, g) of ``pairs`` (P, 2) int,
    in order."""
    ways = match_many_ways(
        queries,
        gallery,
        pairs,
        ratio=ratio,
        geometries=(geometry,),
        workers=workers,
        progress=progress,
    )
    return ways[geometry]


def match_many_ways(
    queries: Sequence[LocalFeatures],
    gallery: Sequence[LocalFeatures],
    pairs: np.ndarray,
    *,
    ratio: float = 0.8,
    geometries: tuple[str, ...] = GEOMETRIES,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, list[LocalMatch]]:
    """``match_many`` under each of ``geometries`` from one matching of each pair
    (``match_local_ways``): {geometry: matches in the order of ``pairs``}. Only the photos
    the pairs name travel to the workers."""
    for geometry in geometries:
        check_geometry(geometry)
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    used_q, pairs_q = np.unique(pairs[:, 0], return_inverse=True)
    used_g, pairs_g = np.unique(pairs[:, 1], return_inverse=True)
    shared = {
        "queries": [queries[i] for i in used_q],
        "gallery": [gallery[i] for i in used_g],
        "ratio": ratio,
        "geometries": tuple(geometries),
    }
    n_workers = pool_size(len(pairs), workers=workers, min_per_worker=MIN_PAIRS_PER_WORKER)
    per_pair = _map_chunks(
        _match_chunk,
        np.stack([pairs_q.ravel(), pairs_g.ravel()], axis=1),
        shared,
        workers=n_workers,
        desc="local matches",
        progress=progress,
    )
    return {g: [ways[i] for ways in per_pair] for i, g in enumerate(geometries)}
