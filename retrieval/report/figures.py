"""The four PNG figures of an evaluation run (SPEC 6), drawn without pyplot.

Numbers say how good a model is; pictures say why: a t-SNE map shows which individuals the
embedding mixes up, the per-class AP chart shows which identities drag the balanced mAP down,
the retrieval grid (``retrieval.report.grid``) shows real queries with their top-5 gallery
matches framed green (same class) or red, and the confusion chart lists the most frequent
mistakes.

Figures are built with ``matplotlib.figure.Figure`` and saved through the Agg renderer, never
through ``matplotlib.pyplot``: no GUI backend is selected, no global figure registry fills up
(nothing to close, nothing leaks in a long run) and importing this module selects no backend.
Every PNG is written to a temporary name in the same folder and moved into place, so a crash
never leaves half a file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from retrieval.errors import InputError
from retrieval.report.grid import MISMATCH_COLOUR, pick_grid_queries, retrieval_grid
from retrieval.report.png import save_png, short_label

TSNE_MAX_POINTS = 3000  # t-SNE is O(n log n) per iteration; more points add little to the picture
# Below this many points t-SNE runs on one OpenMP thread: its 1,000 iterations each open a
# parallel region, and on a busy CPU the barrier waits cost 50x the work (60 points: 9 s vs 0.2 s).
TSNE_PARALLEL_MIN_POINTS = 1000
LEGEND_MAX_CLASSES = 20
AP_TICK_MAX_CLASSES = 60
_GOLDEN = 0.6180339887498949  # hue step that keeps neighbouring class indices far apart
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _notice(fig: Figure, path: Path, title: str, text: str) -> Path:
    """Save a figure that only says why there is nothing to plot (no queries, no confusions)."""
    ax = fig.subplots()
    ax.set_title(title)
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=16)
    ax.set_axis_off()
    return save_png(fig, path)


def class_colours(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """RGBA colours for class indices: (N,) int -> (N, 4) float64.

    Up to ``LEGEND_MAX_CLASSES`` classes get distinct qualitative colours (tab10/tab20);
    beyond that a cyclic colormap (hsv) is stepped by the golden ratio, so class c and c+1
    never look alike even with 1,000 classes.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if n_classes <= 10:
        return colormaps["tab10"](labels % 10)
    if n_classes <= LEGEND_MAX_CLASSES:
        return colormaps["tab20"](labels % 20)
    return colormaps["hsv"]((labels * _GOLDEN) % 1.0)


def _embedding_map(
    path: Path,
    *,
    split: str,
    embeddings: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    seed: int,
) -> Path | None:
    """t-SNE scatter of query embeddings coloured by class; None (no file) below 5 queries."""
    n_total = embeddings.shape[0]
    if n_total < 5:
        return None
    rng = np.random.default_rng(seed)
    keep = np.arange(n_total)
    if n_total > TSNE_MAX_POINTS:
        keep = np.sort(rng.choice(n_total, TSNE_MAX_POINTS, replace=False))
    x, y = embeddings[keep].astype(np.float32), labels[keep]
    n = x.shape[0]
    perplexity = float(min(30.0, max(1.0, (n - 1) / 3)))  # always < n, as sklearn requires
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    with threadpool_limits(limits=1 if n < TSNE_PARALLEL_MIN_POINTS else None, user_api="openmp"):
        xy = tsne.fit_transform(x)  # (n, 2) float32

    present = np.unique(y)
    fig = Figure(figsize=(8, 7))
    ax = fig.subplots()
    colours = class_colours(y, len(class_names))
    ax.scatter(xy[:, 0], xy[:, 1], c=colours, s=14 if n <= 500 else 5, linewidths=0)
    if len(class_names) <= LEGEND_MAX_CLASSES:
        for c, colour in zip(present, class_colours(present, len(class_names)), strict=True):
            ax.scatter([], [], color=colour, label=short_label(class_names[c], 24))  # legend entry
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    sampled = f" (random {n} of {n_total})" if n < n_total else ""
    ax.set_title(
        f"{split}: t-SNE of {n} query embeddings{sampled}, {len(present)} classes "
        f"(perplexity {perplexity:.0f})"
    )
    ax.set_xticks([])
    ax.set_yticks([])
    return save_png(fig, path)


def _per_class_ap_chart(
    path: Path, *, split: str, per_class_ap: dict[int, float], class_names: list[str]
) -> Path:
    """Bars of per-class AP, best first, with the identity-balanced mAP as a horizontal line."""
    items = sorted(per_class_ap.items(), key=lambda kv: (-kv[1], kv[0]))
    n = len(items)
    show_names = n <= AP_TICK_MAX_CLASSES
    fig = Figure(figsize=(max(6.0, 0.28 * n + 2.0) if show_names else 11.0, 4.8))
    if n == 0:
        return _notice(fig, path, f"{split}: per-class AP", "no per-class AP (no queries)")
    ax = fig.subplots()
    aps = np.array([ap for _, ap in items], dtype=np.float64)
    ax.bar(np.arange(n), aps, width=0.8 if show_names else 1.0, color="#4c72b0", linewidth=0)
    mean = float(aps.mean())
    ax.axhline(mean, color=MISMATCH_COLOUR, ls="--", label=f"identity-balanced mAP {mean:.3f}")
    ax.legend(loc="upper right", fontsize=9)
    ax.set_ylim(0, 1.05)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylabel("average precision")
    if show_names:
        ax.set_xticks(np.arange(n), [short_label(class_names[c], 20) for c, _ in items])
        ax.tick_params(axis="x", labelrotation=90, labelsize=8)
    else:
        ax.set_xticks([])
        ax.set_xlabel(f"{n} classes, best to worst (names omitted; see the per-class AP table)")
    ax.set_title(f"{split}: per-class AP of {n} classes, sorted")
    return save_png(fig, path)


def _confusion_chart(path: Path, *, split: str, pairs: list[tuple[str, str, int]]) -> Path:
    """Horizontal bars of the most confused (true -> predicted) pairs; a notice when none."""
    fig = Figure(figsize=(8, max(2.5, 0.4 * len(pairs) + 1.2)))
    title = f"{split}: most confused class pairs (true → predicted)"
    if not pairs:
        return _notice(fig, path, title, "no confusions")
    ax = fig.subplots()
    ax.set_title(title)
    names = [f"{short_label(t, 28)} → {short_label(p, 28)}" for t, p, _ in pairs]
    counts = [int(c) for _, _, c in pairs]
    bars = ax.barh(np.arange(len(pairs)), counts, color=MISMATCH_COLOUR)
    ax.bar_label(bars, padding=3, fontsize=8)
    ax.set_yticks(np.arange(len(pairs)), names, fontsize=8)
    ax.invert_yaxis()  # most frequent mistake on top
    ax.set_xlabel("queries")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0, max(counts) * 1.15)
    return save_png(fig, path)


def _check_inputs(
    *,
    split: str,
    query_embeddings: np.ndarray,
    query_labels: np.ndarray,
    class_names: list[str],
    per_class_ap: dict[int, float],
    query_paths: Sequence[str],
    top_paths: Sequence[Sequence[str]],
    top_labels: np.ndarray,
    max_grid_rows: int,
) -> None:
    """Raise ``InputError`` naming the first argument whose shape or range does not fit."""
    n_classes = len(class_names)
    if not _SPLIT_NAME.fullmatch(split):
        raise InputError(f"split {split!r} must be a plain name such as 'val' or 'test'")
    if query_embeddings.ndim != 2:
        raise InputError(f"query_embeddings must be (Q, D), got shape {query_embeddings.shape}")
    q = query_embeddings.shape[0]
    if query_labels.shape != (q,) or (q and not np.issubdtype(query_labels.dtype, np.integer)):
        raise InputError(
            f"query_labels must be ({q},) int, got {query_labels.shape} {query_labels.dtype}"
        )
    if q and (query_labels.min() < 0 or query_labels.max() >= n_classes):
        raise InputError(f"query_labels must lie in 0..{n_classes - 1}; check class_names")
    if len(query_paths) != q or len(top_paths) != q:
        raise InputError(
            f"query_paths ({len(query_paths)}) and top_paths ({len(top_paths)}) need one "
            f"entry per query ({q})"
        )
    if top_labels.ndim != 2 or top_labels.shape[0] != q:
        raise InputError(f"top_labels must be ({q}, K) int, got shape {top_labels.shape}")
    if top_labels.size and (top_labels.min() < -1 or top_labels.max() >= n_classes):
        raise InputError(f"top_labels must lie in -1..{n_classes - 1} (-1 = empty slot)")
    bad = [c for c in per_class_ap if not 0 <= int(c) < n_classes]
    if bad:
        raise InputError(f"per_class_ap has class indices {bad[:5]} outside 0..{n_classes - 1}")
    if not isinstance(max_grid_rows, int) or max_grid_rows < 1:
        raise InputError(f"max_grid_rows must be an integer >= 1, got {max_grid_rows!r}")


def save_figures(
    out_dir: Path,
    *,
    split: str,
    query_embeddings: np.ndarray,
    query_labels: np.ndarray,
    class_names: list[str],
    per_class_ap: dict[int, float],
    query_paths: list[str],
    top_paths: list[list[str]],
    top_labels: np.ndarray,
    confusion_pairs: list[tuple[str, str, int]],
    image_loader: Callable[[Path], Image.Image],
    top_inliers: np.ndarray | None = None,
    max_grid_rows: int = 8,
    seed: int = 0,
    progress: bool = False,
) -> list[Path]:
    """Write ``{split}_*.png`` figures under ``out_dir`` (created) and return their paths.

    query_embeddings: (Q, D) float32, L2-normalised; query_labels: (Q,) int class indices;
    top_labels: (Q, K) int class indices of each query's ranked gallery matches, -1 = empty,
    with ``top_paths[i]`` the matching image paths; per_class_ap: class index -> AP;
    top_inliers: (Q, K) int verified keypoint matches beside them (-1 = not matched), or None
    where local matching did not run.
    ``image_loader`` is ``retrieval.data.images.load_rgb`` in the project; a tile whose image
    it cannot load becomes a grey "missing" placeholder. The t-SNE map is skipped (not in
    the returned list) when Q < 5; ``seed`` fixes its subsample and the grid's query pick.
    """
    query_embeddings = np.asarray(query_embeddings)
    query_labels = np.asarray(query_labels)
    top_labels = np.asarray(top_labels)
    _check_inputs(
        split=split,
        query_embeddings=query_embeddings,
        query_labels=query_labels,
        class_names=class_names,
        per_class_ap=per_class_ap,
        query_paths=query_paths,
        top_paths=top_paths,
        top_labels=top_labels,
        max_grid_rows=max_grid_rows,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    correct = (
        top_labels[:, 0] == query_labels
        if top_labels.shape[1]
        else np.zeros(len(query_labels), bool)
    )
    rows = pick_grid_queries(correct, n_rows=max_grid_rows, seed=seed)
    name = f"{split}_{{}}.png"
    jobs = [
        partial(
            _embedding_map,
            out_dir / name.format("embedding_map"),
            embeddings=query_embeddings,
            labels=query_labels,
            class_names=class_names,
            seed=seed,
        ),
        partial(
            _per_class_ap_chart,
            out_dir / name.format("per_class_ap"),
            per_class_ap=per_class_ap,
            class_names=class_names,
        ),
        partial(
            retrieval_grid,
            out_dir / name.format("retrieval_grid"),
            rows=rows,
            query_labels=query_labels,
            class_names=class_names,
            query_paths=query_paths,
            top_paths=top_paths,
            top_labels=top_labels,
            top_inliers=top_inliers,
            image_loader=image_loader,
        ),
        partial(_confusion_chart, out_dir / name.format("confusion_pairs"), pairs=confusion_pairs),
    ]
    written = []
    for job in tqdm(jobs, desc="figures", unit="fig", disable=not progress):
        path = job(split=split)
        if path is not None:
            written.append(path)
    return written
