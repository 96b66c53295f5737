"""Exact vector search over the gallery: the one module that imports faiss.

Why an inner-product flat index: the model emits L2-normalised embeddings, and on unit vectors
``||a - b||^2 = 2 - 2 a.b``, so ``faiss.IndexFlatIP`` ranks exactly like ``IndexFlatL2`` (the
SPEC's exact L2 IndexFlat) while its scores are cosine similarities directly. L2 distances are
derived as ``sqrt(max(0, 2 - 2 cos))`` for the voting rule. Every vector entering the index or a
search goes through :func:`normalize`, so non-normalised input is normalised (not rejected), and
NaN/inf or zero rows are rejected with an :class:`~retrieval.errors.InputError`.

The flat index is wrapped in ``faiss.IndexIDMap2`` so that every gallery row keeps a stable
external ID (int64, never -1) across ``remove_ids`` and ``add_with_ids``; searches return those
IDs, and the caller keeps the ID -> label/path table beside the saved index. The CPU index is
always the source of truth (it is what :meth:`FlatIndex.save` writes); with GPUs a replica of
the flat storage is searched instead and rebuilt after every change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from retrieval.errors import InputError
from retrieval.io import atomic_path
from retrieval.metrics import unit_rows

QUERY_CHUNK_ROWS = 4096
GPU_MAX_K = 2048  # largest k the faiss GPU k-selection supports


@dataclass(frozen=True, eq=False)
class SearchResult:
    """Nearest gallery items per query, best first.

    scores: (Q, k) float32 cosine similarities, descending per row.
    distances: (Q, k) float32 L2 distances between unit vectors, ascending per row.
    indices: (Q, k) int64 external gallery IDs (-1 = no result).
    """

    scores: np.ndarray
    distances: np.ndarray
    indices: np.ndarray


def normalize(x: np.ndarray) -> np.ndarray:
    """Unit float32 rows of ``x`` (N, D), N = 0 allowed (``metrics.unit_rows``)."""
    return unit_rows(x, "embeddings", allow_empty=True)


def similarity_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of every row of ``a`` with every row of ``b`` (for pairs scoring).

    a: (Na, D), b: (Nb, D); both are normalised first. Returns (Na, Nb) float32.
    """
    a, b = normalize(a), normalize(b)
    if a.shape[1] != b.shape[1]:
        raise InputError(
            f"similarity_matrix needs equal widths, got D={a.shape[1]} and D={b.shape[1]}; "
            "embed both sets with the same model"
        )
    return a @ b.T


def _gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _resolve_use_gpu(use_gpu: bool | None) -> bool:
    if use_gpu is None:
        return _gpu_available()
    if use_gpu and not _gpu_available():
        raise InputError(
            "use_gpu=True but this faiss build sees no GPU (faiss-cpu or no CUDA device); "
            "install faiss-gpu on a CUDA machine or pass use_gpu=False"
        )
    return bool(use_gpu)


class FlatIndex:
    """Exact cosine search over unit embeddings with stable int64 IDs (CPU or GPU)."""

    def __init__(self, dim: int, *, use_gpu: bool | None = None) -> None:
        """dim: embedding width D; use_gpu: None = GPU when faiss has one, else CPU."""
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise InputError(f"index dim must be a positive integer, got {dim!r}")
        self._dim = int(dim)
        self._use_gpu = _resolve_use_gpu(use_gpu)
        self._flat = faiss.IndexFlatIP(self._dim)  # kept referenced: the map does not own it
        self._cpu = faiss.IndexIDMap2(self._flat)
        self._ids_cache: np.ndarray | None = None
        self._gpu_res = None
        self._gpu_flat = None

    @property
    def dim(self) -> int:
        """Embedding width D."""
        return self._dim

    @property
    def ntotal(self) -> int:
        """Number of gallery vectors stored."""
        return int(self._cpu.ntotal)

    @property
    def use_gpu(self) -> bool:
        """Whether searches run on a GPU replica."""
        return self._use_gpu

    def ids(self) -> np.ndarray:
        """External IDs in storage order: (N,) int64 (a copy)."""
        if self._ids_cache is None:
            self._ids_cache = faiss.vector_to_array(self._cpu.id_map).astype(np.int64)
        return self._ids_cache.copy()

    def add(self, embeddings: np.ndarray) -> np.ndarray:
        """Append vectors with fresh IDs; returns them, (N,) int64.

        Fresh IDs start at the largest stored ID + 1 (0 when empty), the same before and after
        save/load; so a removed largest ID can come back. Callers that must never reuse an ID
        pass their own to :meth:`add_with_ids`.
        """
        x = self._check_vectors(embeddings, "embeddings")
        existing = self.ids()
        start = int(existing.max()) + 1 if existing.size else 0
        new_ids = np.arange(start, start + x.shape[0], dtype=np.int64)
        self._add(x, new_ids)
        return new_ids

    def add_with_ids(self, embeddings: np.ndarray, ids: np.ndarray) -> None:
        """Append vectors under caller-chosen IDs: (N,) non-negative, unique, not yet stored."""
        x = self._check_vectors(embeddings, "embeddings")
        ids = np.asarray(ids)
        if ids.shape != (x.shape[0],) or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise InputError(
                f"ids must be an integer array of shape ({x.shape[0]},), got {ids.dtype} "
                f"{ids.shape}; pass one int ID per embedding row"
            )
        ids = ids.astype(np.int64)
        if ids.size and ids.min() < 0:
            raise InputError("ids must be >= 0 (-1 means 'no result'); renumber the IDs")
        if np.unique(ids).size != ids.size or np.isin(ids, self.ids()).any():
            raise InputError(
                "ids must be unique and not already in the index; remove_ids() first or use add()"
            )
        self._add(x, ids)

    def remove_ids(self, ids: np.ndarray) -> int:
        """Delete the vectors with these external IDs; unknown IDs are ignored. Returns count."""
        ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))
        if ids.size == 0:
            return 0
        removed = int(self._cpu.remove_ids(faiss.IDSelectorArray(ids.size, faiss.swig_ptr(ids))))
        self._changed()
        return removed

    def reconstruct_all(self) -> np.ndarray:
        """All stored vectors in storage order (row i has ID ``ids()[i]``): (N, D) float32."""
        if self.ntotal == 0:
            return np.empty((0, self._dim), dtype=np.float32)
        return np.ascontiguousarray(self._flat.reconstruct_n(0, self.ntotal), dtype=np.float32)

    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        """Top-k gallery items per query by cosine; k is clipped to ntotal.

        queries: (Q, D), normalised here. Rows are searched in chunks of QUERY_CHUNK_ROWS.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        q = self._check_vectors(queries, "queries")
        k = min(int(k), self.ntotal)
        if self._use_gpu and k > GPU_MAX_K:
            raise InputError(
                f"k={k} exceeds the faiss GPU limit of {GPU_MAX_K} neighbours; "
                f"ask for k <= {GPU_MAX_K} or build the index with use_gpu=False"
            )
        n = q.shape[0]
        scores = np.empty((n, k), dtype=np.float32)
        positions = np.empty((n, k), dtype=np.int64)
        if k > 0:
            backend = self._search_backend()
            for start in range(0, n, QUERY_CHUNK_ROWS):
                stop = min(start + QUERY_CHUNK_ROWS, n)
                scores[start:stop], positions[start:stop] = backend.search(q[start:stop], k)
        store_ids = self.ids()
        indices = np.where(positions >= 0, store_ids[np.clip(positions, 0, None)], -1)
        distances = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * scores)).astype(np.float32)
        return SearchResult(scores=scores, distances=distances, indices=indices.astype(np.int64))

    def save(self, path: Path) -> None:
        """Write the CPU index atomically (``io.atomic_path``): a crash keeps the old file."""
        with atomic_path(Path(path)) as tmp:
            faiss.write_index(self._cpu, str(tmp))

    @classmethod
    def load(cls, path: Path, *, use_gpu: bool | None = None) -> FlatIndex:
        """Read an index written by :meth:`save`; no re-embedding needed."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"index file {path} not found; build the gallery first")
        try:
            loaded = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise InputError(
                f"index file {path} is not a readable faiss index ({str(exc).splitlines()[0]}); "
                "rebuild the gallery"
            ) from None
        inner = (
            faiss.downcast_index(loaded.index) if isinstance(loaded, faiss.IndexIDMap2) else None
        )
        if (
            not isinstance(inner, faiss.IndexFlat)
            or loaded.metric_type != faiss.METRIC_INNER_PRODUCT
        ):
            raise InputError(
                f"index file {path} holds a {type(loaded).__name__}, not the IndexIDMap2("
                "IndexFlatIP) this tool writes; rebuild the gallery"
            )
        index = cls(loaded.d, use_gpu=use_gpu)
        index._flat, index._cpu = inner, loaded
        return index

    def _check_vectors(self, x: np.ndarray, name: str) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self._dim:
            raise InputError(
                f"{name} must have shape (N, {self._dim}) for this index, got {x.shape}; "
                "use embeddings from the model that built the gallery"
            )
        return normalize(x)

    def _add(self, x: np.ndarray, ids: np.ndarray) -> None:
        if x.shape[0]:
            self._cpu.add_with_ids(x, np.ascontiguousarray(ids, dtype=np.int64))
            self._changed()

    def _changed(self) -> None:
        self._ids_cache = None
        self._gpu_flat = None

    def _search_backend(self) -> faiss.Index:
        """The flat storage to search (positions, not IDs): CPU, or a GPU replica."""
        if not self._use_gpu:
            return self._flat
        if self._gpu_flat is None:
            if self._gpu_res is None:
                self._gpu_res = faiss.StandardGpuResources()
            self._gpu_flat = faiss.index_cpu_to_gpu(self._gpu_res, 0, self._flat)
        return self._gpu_flat
