"""Evaluation figures on synthetic embeddings and tiny images: files, frames, placeholders."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from PIL import Image

from retrieval.data.images import load_rgb
from retrieval.errors import InputError
from retrieval.report.figures import class_colours, save_figures
from retrieval.report.grid import (
    MATCH_COLOUR,
    MISMATCH_COLOUR,
    PLACEHOLDER_GREY,
    pick_grid_queries,
)

REPO = Path(__file__).resolve().parents[1]
# Far from the frame green/red and from the placeholder grey, so pixel counts mean something.
TILE_COLOURS = [(30, 60, 220), (230, 160, 20), (210, 40, 200), (20, 200, 210)]
KINDS = ("embedding_map", "per_class_ap", "retrieval_grid", "confusion_pairs")


def make_inputs(
    root: Path, *, n_queries: int, n_classes: int = 4, wrong: tuple[int, ...] = ()
) -> dict:
    """Keyword arguments for ``save_figures``: clustered embeddings and 32 px tiles on disk.

    Every query's top-5 is of its own class, except the queries in ``wrong``, whose top-1 and
    top-3 come from the next class.
    """
    rng = np.random.default_rng(0)
    names = [f"class_{c}" for c in range(n_classes)]
    gallery = []
    for c in range(n_classes):
        gallery.append(root / "gallery" / f"{c}.png")
        gallery[-1].parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), TILE_COLOURS[c % len(TILE_COLOURS)]).save(gallery[-1])
    labels = np.arange(n_queries) % n_classes
    (root / "query").mkdir(parents=True, exist_ok=True)
    query_paths = []
    for i, c in enumerate(labels):
        query_paths.append(str(root / "query" / f"{i}.png"))
        Image.new("RGB", (32, 40), TILE_COLOURS[c % len(TILE_COLOURS)]).save(query_paths[-1])
    emb = rng.normal(size=(n_classes, 16))[labels] + 0.2 * rng.normal(size=(n_queries, 16))
    top_labels = np.repeat(labels[:, None], 5, axis=1)
    for i in wrong:
        top_labels[i, [0, 2]] = (labels[i] + 1) % n_classes
    return dict(
        split="val",
        query_embeddings=(emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32),
        query_labels=labels,
        class_names=names,
        per_class_ap={c: 1.0 - 0.1 * c for c in range(n_classes)},
        query_paths=query_paths,
        top_paths=[[str(gallery[c]) for c in row] for row in top_labels],
        top_labels=top_labels,
        confusion_pairs=[(names[labels[i]], names[(labels[i] + 1) % n_classes], 1) for i in wrong],
        image_loader=load_rgb,
    )


def pixels_near(png: Path, colour: tuple[int, int, int] | str, tol: int = 12) -> int:
    """How many pixels of ``png`` lie within ``tol`` of ``colour`` in every channel."""
    if isinstance(colour, str):
        colour = tuple(round(255 * v) for v in to_rgb(colour))
    rgb = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    return int((np.abs(rgb - np.array(colour)) <= tol).all(axis=-1).sum())


def test_writes_four_valid_pngs(tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path, n_queries=60, wrong=(1, 6, 11))
    out_dir = tmp_path / "figures" / "run1"  # created by save_figures
    written = save_figures(out_dir, **inputs)
    assert written == [out_dir / f"val_{kind}.png" for kind in KINDS]
    for path in written:
        with Image.open(path) as im:
            assert im.format == "PNG"
            assert min(im.size) > 200
        assert path.stat().st_size > 5_000
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(p.name for p in written)
    grid = out_dir / "val_retrieval_grid.png"
    assert pixels_near(grid, MATCH_COLOUR) > 1_000
    assert pixels_near(grid, MISMATCH_COLOUR) > 1_000  # the picked wrong queries show red
    assert pixels_near(grid, PLACEHOLDER_GREY, tol=2) < 500  # every image loaded


def test_all_correct_grid_has_no_red_frames(tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path, n_queries=4)
    written = save_figures(tmp_path / "out", **inputs, max_grid_rows=3)
    grid = tmp_path / "out" / "val_retrieval_grid.png"
    assert grid in written
    assert pixels_near(grid, MATCH_COLOUR) > 1_000
    assert pixels_near(grid, MISMATCH_COLOUR) == 0


@pytest.mark.parametrize("n_queries", [0, 4])
def test_fewer_than_five_queries_skip_the_embedding_map(tmp_path: Path, n_queries: int) -> None:
    inputs = make_inputs(tmp_path, n_queries=n_queries)
    written = save_figures(tmp_path / "out", **inputs)
    assert [p.name for p in written] == [f"val_{kind}.png" for kind in KINDS[1:]]
    assert not (tmp_path / "out" / "val_embedding_map.png").exists()
    for path in written:
        with Image.open(path) as im:
            assert im.format == "PNG"


def test_missing_image_becomes_grey_placeholder(tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path, n_queries=4)
    inputs["top_paths"][0][1] = str(tmp_path / "deleted.png")
    Path(inputs["query_paths"][2]).write_bytes(b"not a png")  # unreadable, not just absent
    save_figures(tmp_path / "out", **inputs, max_grid_rows=4)
    grid = tmp_path / "out" / "val_retrieval_grid.png"
    assert pixels_near(grid, PLACEHOLDER_GREY, tol=2) > 2 * 5_000  # two tiles of ~130x130 px


def test_many_classes_and_empty_confusions(tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path, n_queries=80, n_classes=80)
    assert inputs["confusion_pairs"] == []
    written = save_figures(tmp_path / "out", **inputs, max_grid_rows=2)
    assert len(written) == 4
    with Image.open(tmp_path / "out" / "val_per_class_ap.png") as im:
        assert im.size[0] > 800  # the wide no-tick-label layout


def test_same_seed_same_files(tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path, n_queries=12, wrong=(3,))
    first = save_figures(tmp_path / "a", **inputs, seed=7, max_grid_rows=1)
    second = save_figures(tmp_path / "b", **inputs, seed=7, max_grid_rows=1)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


@pytest.mark.parametrize(
    ("n_right", "n_wrong", "n_rows", "want_right", "want_wrong"),
    [
        (10, 10, 8, 4, 4),
        (10, 10, 5, 2, 3),
        (10, 1, 8, 7, 1),  # too few mistakes: topped up with successes
        (1, 10, 8, 1, 7),
        (0, 6, 8, 0, 6),
        (3, 0, 8, 3, 0),
        (0, 0, 8, 0, 0),
    ],
)
def test_pick_grid_queries_mixes_right_and_wrong(
    n_right: int, n_wrong: int, n_rows: int, want_right: int, want_wrong: int
) -> None:
    correct = np.array([True] * n_right + [False] * n_wrong)
    np.random.default_rng(1).shuffle(correct)
    picked = pick_grid_queries(correct, n_rows=n_rows, seed=3)
    assert picked.dtype == np.int64
    assert len(set(picked.tolist())) == len(picked) == want_right + want_wrong
    assert correct[picked].sum() == want_right
    assert correct[picked[:want_right]].all()  # successes first, then mistakes
    assert np.array_equal(picked, pick_grid_queries(correct, n_rows=n_rows, seed=3))


def test_neighbouring_classes_get_distinct_colours() -> None:
    for n_classes in (4, 20, 1000):
        colours = class_colours(np.arange(n_classes), n_classes)[:, :3]
        steps = np.abs(np.diff(colours, axis=0)).max(axis=1)  # (C-1,) colour change per step
        assert steps.min() > 0.1, n_classes


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(split="val/../x"), "split"),
        (dict(query_labels=np.zeros(3, dtype=np.int64)), "query_labels"),
        (dict(query_labels=np.full(6, 9)), "query_labels"),
        (dict(query_paths=["a.png"]), "query_paths"),
        (dict(top_labels=np.zeros((6,), dtype=np.int64)), "top_labels"),
        (dict(top_labels=np.full((6, 5), -2)), "top_labels"),
        (dict(per_class_ap={99: 0.5}), "per_class_ap"),
        (dict(max_grid_rows=0), "max_grid_rows"),
    ],
)
def test_bad_inputs_name_the_argument(tmp_path: Path, change: dict, message: str) -> None:
    inputs = make_inputs(tmp_path, n_queries=6) | change
    with pytest.raises(InputError, match=message):
        save_figures(tmp_path / "out", **inputs)
    assert not (tmp_path / "out").exists()  # nothing written before the check


def test_no_pyplot_and_no_torch(tmp_path: Path) -> None:
    """Drawing selects no GUI backend (no pyplot) and pulls in no torch (CLI import order)."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from tests.test_figures import make_inputs\n"
        "from retrieval.report.figures import save_figures\n"
        f"root = Path({str(tmp_path)!r})\n"
        "save_figures(root / 'out', **make_inputs(root, n_queries=3))\n"
        "print(sorted(m for m in ('matplotlib.pyplot', 'torch') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_grid_marks_each_match_with_its_inliers(tmp_path: Path) -> None:
    """Where local matching re-scored the matches, each tile's caption gains its count of
    verified keypoint matches (drawn in the frame's colour); -1 (not matched) adds nothing."""
    inputs = make_inputs(tmp_path, n_queries=4)
    counts = np.full(inputs["top_labels"].shape, 42)
    counts[:, 3:] = -1
    save_figures(tmp_path / "plain", **inputs, max_grid_rows=3)
    save_figures(tmp_path / "marked", **inputs, top_inliers=counts, max_grid_rows=3)
    grid = "val_retrieval_grid.png"
    assert pixels_near(tmp_path / "marked" / grid, MATCH_COLOUR) > pixels_near(
        tmp_path / "plain" / grid, MATCH_COLOUR
    )
