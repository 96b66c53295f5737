"""Pairwise similarity scoring in the Kaggle Jaguar Re-ID format (SPEC 5.4).

Why a module of its own: the competition gives ``row_id,query_image,gallery_image`` rows
(137,270 pairs over 371 images) and wants ``row_id,similarity`` back in the same order. Each
image is embedded once by the caller; here names are mapped to embedding rows and every pair
is scored with one vectorised row-wise dot product (no Python loop over pairs). Row IDs are
read and written as text so they round-trip exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from retrieval.errors import InputError
from retrieval.io import atomic_path

PAIR_COLUMNS = ("row_id", "query_image", "gallery_image")
PAIR_CHUNK_ROWS = 65536


def read_pairs(csv_path: Path) -> pd.DataFrame:
    """Read a pairs CSV; returns columns row_id, query_image, gallery_image (all str)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise InputError(f"pairs file {csv_path} not found; pass the competition's test.csv")
    expected = f"expected a text CSV with the header {','.join(PAIR_COLUMNS)} (like test.csv)"
    with csv_path.open("rb") as handle:
        if b"\0" in handle.read(4096):
            raise InputError(f"pairs file {csv_path} is binary, not a CSV; {expected}")
    try:
        frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise InputError(f"pairs file {csv_path} is empty; {expected}") from None
    except UnicodeDecodeError as exc:
        raise InputError(
            f"pairs file {csv_path} is not UTF-8 text (it holds byte "
            f"{exc.object[exc.start]:#04x}); save it as UTF-8: {expected}"
        ) from None
    except pd.errors.ParserError as exc:
        raise InputError(
            f"pairs file {csv_path} is not a well-formed CSV ({str(exc).strip()}); {expected}"
        ) from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in PAIR_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(
            f"pairs file {csv_path} lacks columns {missing} (found {list(frame.columns)}); "
            f"the header must be {','.join(PAIR_COLUMNS)}"
        )
    if frame.empty:
        raise InputError(f"pairs file {csv_path} has a header but no pairs; nothing to score")
    frame = frame.loc[:, list(PAIR_COLUMNS)].reset_index(drop=True)
    _refuse_empty_cells(frame, csv_path)
    duplicated = frame["row_id"].duplicated()
    if duplicated.any():
        raise InputError(
            f"pairs file {csv_path} repeats row_id {frame['row_id'][duplicated].iloc[0]!r}; "
            "row IDs must be unique"
        )
    return frame


def _refuse_empty_cells(frame: pd.DataFrame, csv_path: Path) -> None:
    """An empty cell is a damaged row, not an image missing from ``--images``: say where."""
    empty = frame.apply(lambda column: column.str.strip() == "")
    if not empty.to_numpy().any():
        return
    row = int(empty.any(axis=1).to_numpy().argmax())
    column = str(empty.columns[empty.iloc[row].to_numpy().argmax()])
    count = int(empty.to_numpy().sum())
    raise InputError(
        f"pairs file {csv_path} has {count} empty cell(s), the first in column {column} of "
        f"data row {row + 1} (row_id {frame['row_id'].iloc[row]!r}); every row needs a "
        f"row_id, query_image and gallery_image: fill the cell in or delete the row"
    )


def distinct_images(pairs_df: pd.DataFrame) -> list[str]:
    """Every image named in either column, sorted: the set to embed once."""
    return sorted(set(pairs_df["query_image"]) | set(pairs_df["gallery_image"]))


def missing_images(names: list[str], images_dir: Path) -> list[str]:
    """The names with no file under images_dir (report them all before embedding anything)."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise InputError(f"images folder {images_dir} not found; pass --images DIR")
    return [name for name in names if not (images_dir / name).is_file()]


def pair_rows(pairs_df: pd.DataFrame, names: list[str], n_rows: int) -> tuple[np.ndarray, ...]:
    """Embedding row of each pair's query and gallery image: two (n_pairs,) int64 arrays."""
    if len(names) != n_rows:
        raise InputError(f"got {len(names)} names for {n_rows} embedding rows; need one per row")
    lookup = pd.Index(names)
    if not lookup.is_unique:
        raise InputError("image names must be unique (one embedding row per image)")
    rows = []
    for column in PAIR_COLUMNS[1:]:
        found = lookup.get_indexer(pairs_df[column])
        if (found < 0).any():
            absent = sorted(set(pairs_df[column][found < 0]))
            raise InputError(
                f"{len(absent)} images in column {column} have no embedding, e.g. {absent[:3]}; "
                "embed every name from distinct_images()"
            )
        rows.append(found.astype(np.int64))
    return rows[0], rows[1]


def score_pairs(pairs_df: pd.DataFrame, names: list[str], embeddings: np.ndarray) -> np.ndarray:
    """Cosine similarity of every pair, in pairs_df order: (n_pairs,) float32.

    names[i] is the image of embeddings[i]; embeddings: (N, D), normalised here.
    """
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2:
        raise InputError(f"embeddings must be (N, D), got shape {embeddings.shape}")
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    if not (np.isfinite(norms).all() and (norms > 1e-12).all()):
        raise InputError("embeddings have NaN/inf or zero rows; re-embed those images")
    unit = embeddings / norms
    query_rows, gallery_rows = pair_rows(pairs_df, names, unit.shape[0])
    out = np.empty(query_rows.shape[0], dtype=np.float32)
    for start in range(0, out.shape[0], PAIR_CHUNK_ROWS):
        stop = start + PAIR_CHUNK_ROWS
        out[start:stop] = np.einsum(
            "ij,ij->i", unit[query_rows[start:stop]], unit[gallery_rows[start:stop]]
        )
    return out


def score_pairs_from_matrix(
    pairs_df: pd.DataFrame, names: list[str], similarity: np.ndarray
) -> np.ndarray:
    """Look every pair up in a precomputed (N, N) similarity (e.g. after re-ranking).

    similarity[i, j] scores names[i] as query against names[j]. Returns (n_pairs,) float32.
    """
    similarity = np.asarray(similarity)
    if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
        raise InputError(f"similarity must be a square (N, N) matrix, got {similarity.shape}")
    query_rows, gallery_rows = pair_rows(pairs_df, names, similarity.shape[0])
    return similarity[query_rows, gallery_rows].astype(np.float32)


def write_submission(path: Path, row_ids: list[str] | np.ndarray, similarity: np.ndarray) -> None:
    """Write ``row_id,similarity`` in the given order, atomically (``io.atomic_path``).

    similarity: (n_pairs,) finite floats, written with 8 decimals.
    """
    path = Path(path)
    row_ids = np.asarray(row_ids)
    similarity = np.asarray(similarity, dtype=np.float64)
    if row_ids.ndim != 1 or similarity.shape != row_ids.shape:
        raise InputError(
            f"need one similarity per row_id, got {row_ids.shape} row IDs and "
            f"{similarity.shape} scores"
        )
    if not np.isfinite(similarity).all():
        raise InputError("similarity has NaN or inf values; check the embeddings")
    frame = pd.DataFrame({"row_id": row_ids, "similarity": similarity})
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.8f")
