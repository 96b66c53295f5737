"""The saved gallery: a Faiss index plus, per item, its class and image path (SPEC 5.1).

A gallery is tied to the model that embedded it by a fingerprint (weights hash, backbone,
image size): searching it with another model's embeddings would return confident nonsense,
so loading with a different fingerprint is refused.

On disk (``<workdir>/gallery/``) every save writes a new version folder and then switches the
``current.json`` pointer atomically, so a crash mid-save leaves the previous gallery intact.
The last ``keep_versions`` versions stay on disk, so a user can go back to one
(``search.py --restore_gallery``).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retrieval.errors import InputError
from retrieval.io import read_json, write_json_atomic
from retrieval.serving import classes
from retrieval.serving.decide import DecisionPolicy
from retrieval.serving.expansion import GalleryExpansion, augment_gallery, expand_queries
from retrieval.serving.fusion import Fusion
from retrieval.serving.index import FlatIndex, SearchResult
from retrieval.workdir_lock import may_write

POINTER = "current.json"
GALLERY_FOLDER = "gallery"  # <workdir>/gallery
FORMAT_VERSION = 2  # 2: a decision policy replaced the vote thresholds
EXPANDED_INDEX = "index_expanded.faiss"  # the DBA'd vectors, beside index.faiss
KEEP_VERSIONS = 5  # gallery versions kept on disk by default (search.py --keep_galleries)


@dataclass(frozen=True)
class GalleryHits:
    """Search results with the gallery's own labels attached."""

    result: SearchResult  # scores/distances/indices (Q, k); indices are gallery item IDs
    labels: np.ndarray  # (Q, k) int64 class index per hit, -1 where there is no hit
    paths: list[list[str]]  # (Q, k) image paths per hit


@dataclass
class Gallery:
    """Index + per-item tables; item IDs are the Faiss external IDs and index the tables."""

    index: FlatIndex
    labels_by_id: np.ndarray  # (max_id + 1,) int64 class index, -1 for removed items
    paths_by_id: list[str]  # image path per item ID, "" for removed items
    class_names: list[str]  # class index -> name
    fingerprint: str
    policy: DecisionPolicy | None = None  # chosen on val; None: not chosen yet
    history: list[dict] = field(default_factory=list)  # what built or changed the gallery
    expansion: GalleryExpansion | None = None  # --rerank qe, chosen on val
    fusion: Fusion | None = None  # local matching: chosen on val; None: not chosen yet
    journal: int = 0  # entries of the workdir's enrolment journal this gallery holds
    keep_versions: int = KEEP_VERSIONS  # versions kept on disk by each save
    # the DBA'd vectors under the same IDs, built on first use and dropped on every change
    _augmented: FlatIndex | None = field(default=None, init=False, repr=False, compare=False)
    _means: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        labels: np.ndarray,
        paths: list[str],
        *,
        class_names: list[str],
        fingerprint: str,
        use_gpu: bool | None = None,
    ) -> Gallery:
        """embeddings: (N, D) float32 unit rows; labels: (N,) int64 class indices."""
        if len(paths) != len(embeddings) or len(labels) != len(embeddings):
            raise ValueError("embeddings, labels and paths must have the same length")
        index = FlatIndex(embeddings.shape[1], use_gpu=use_gpu)
        index.add_with_ids(embeddings, np.arange(len(embeddings), dtype=np.int64))
        return cls(
            index=index,
            labels_by_id=np.asarray(labels, dtype=np.int64).copy(),
            paths_by_id=[str(p) for p in paths],
            class_names=list(class_names),
            fingerprint=fingerprint,
            history=[{"event": "build", "items": len(paths), "time": now()}],
        )

    @property
    def size(self) -> int:
        return self.index.ntotal

    def search(self, queries: np.ndarray, k: int, *, expand: bool = False) -> GalleryHits:
        """Top-k items per query; queries (Q, D) float32 unit rows. ``expand``: with the
        stored query expansion (scores are then cosines between expanded vectors)."""
        queries, index = self.search_space(queries, expand=expand)
        return self.label_hits(index.search(queries, k))

    def search_space(self, queries: np.ndarray, *, expand: bool) -> tuple[np.ndarray, FlatIndex]:
        """The queries and the index a search compares: as given against the stored vectors,
        or (``expand``) alpha-QE'd against the DBA'd vectors, which keep the item IDs."""
        if not expand:
            return queries, self.index
        index = self.augmented_index()
        if index.ntotal == 0:  # nothing to average with, nothing to find
            return queries, index
        return expand_queries(queries, index.reconstruct_all(), self.expansion), index

    def policy_for(self, *, expand: bool) -> DecisionPolicy:
        """The decision policy chosen for this kind of search (defaults before any choice)."""
        policy = self.chosen_expansion().policy if expand else self.policy
        return policy if policy is not None else DecisionPolicy()

    def class_means(self, *, expand: bool) -> np.ndarray:
        """(C, D) float32 unit mean of each class's stored (``expand``: DBA'd) vectors."""
        if expand not in self._means:
            index = self.augmented_index() if expand else self.index
            labels = self.labels_by_id[index.ids()]
            vectors = index.reconstruct_all()
            self._means[expand] = classes.class_means(vectors, labels, len(self.class_names))
        return self._means[expand]

    def _changed(self) -> None:
        """Neighbourhoods and class means moved: rebuild the caches on next use."""
        self._augmented = None
        self._means = {}

    def chosen_expansion(self) -> GalleryExpansion:
        """The stored expansion, or an ``InputError`` that says how to choose one."""
        if self.expansion is None:
            raise InputError(
                "this gallery has no query expansion chosen; run with --rerank qe, which "
                "chooses it on the val split"
            )
        return self.expansion

    def augmented_index(self) -> FlatIndex:
        """The stored vectors after DBA with the chosen expansion, built on first use."""
        expansion = self.chosen_expansion()
        if self._augmented is None:
            self._augmented = FlatIndex(self.index.dim, use_gpu=self.index.use_gpu)
            if self.size:  # a gallery emptied by --remove stays searchable (no hits)
                vectors = augment_gallery(self.index.reconstruct_all(), expansion)
                self._augmented.add_with_ids(vectors, self.index.ids())
        return self._augmented

    def set_expansion(self, expansion: GalleryExpansion) -> None:
        self.expansion = expansion
        self._changed()
        self.history.append({"event": "expansion", **expansion.to_dict(), "time": now()})

    def set_fusion(self, fusion: Fusion) -> None:
        self.fusion = fusion
        entry = {"mode": fusion.mode, "shortlist": fusion.shortlist, **fusion.evidence}
        self.history.append({"event": "local_match", **entry, "time": now()})

    def label_hits(self, result: SearchResult) -> GalleryHits:
        """``result`` (indices are item IDs) with each hit's class and image path."""
        safe = np.clip(result.indices, 0, None)
        labels = np.where(result.indices >= 0, self.labels_by_id[safe], -1)
        paths = [[self.paths_by_id[i] if i >= 0 else "" for i in row] for row in result.indices]
        return GalleryHits(result=result, labels=labels, paths=paths)

    def class_index(self, name: str, *, create: bool = False) -> int:
        """Index of class ``name``; with ``create``, a new class is appended (enrollment)."""
        if name in self.class_names:
            return self.class_names.index(name)
        if not create:
            raise InputError(
                f"class {name!r} is not in the gallery; known classes: "
                f"{', '.join(self.class_names[:10])}{' ...' if len(self.class_names) > 10 else ''}"
            )
        self.class_names.append(name)
        return len(self.class_names) - 1

    def add_items(self, embeddings: np.ndarray, names: list[str], paths: list[str]) -> np.ndarray:
        """Append items under fresh IDs (never reused); returns the IDs, (N,) int64."""
        labels = np.array([self.class_index(n, create=True) for n in names], dtype=np.int64)
        start = len(self.labels_by_id)
        ids = np.arange(start, start + len(paths), dtype=np.int64)
        self.index.add_with_ids(embeddings, ids)
        self.labels_by_id = np.concatenate([self.labels_by_id, labels])
        self.paths_by_id += [str(p) for p in paths]
        self._changed()
        return ids

    def remove_class(self, name: str) -> int:
        """Drop every item of class ``name``; other items keep their IDs. Returns the count."""
        label = self.class_index(name)
        return self._remove_ids(np.flatnonzero(self.labels_by_id == label).astype(np.int64))

    def remove_paths(self, paths: set[str]) -> int:
        """Drop the live items of these image paths; returns how many went."""
        ids = [i for i, p in enumerate(self.paths_by_id) if p and p in paths]
        return self._remove_ids(np.array(ids, dtype=np.int64))

    def _remove_ids(self, ids: np.ndarray) -> int:
        removed = self.index.remove_ids(ids)
        self._changed()
        self.labels_by_id[ids] = -1
        for i in ids:
            self.paths_by_id[i] = ""
        return removed

    def live_paths(self) -> set[str]:
        return {p for p in self.paths_by_id if p}

    def live_classes(self) -> set[str]:
        """Names of the classes with at least one item (a removed class keeps its index)."""
        return {self.class_names[i] for i in np.unique(self.labels_by_id[self.labels_by_id >= 0])}

    def vectors_by_path(self, paths: set[str]) -> dict[str, np.ndarray]:
        """Stored vectors of the live items whose image path is in ``paths``: (D,) float32 each."""
        item_ids = {p: i for i, p in enumerate(self.paths_by_id) if p in paths}
        if not item_ids:
            return {}
        row_of = {int(item_id): row for row, item_id in enumerate(self.index.ids())}
        vectors = self.index.reconstruct_all()
        return {p: vectors[row_of[i]] for p, i in item_ids.items() if i in row_of}

    # ------------------------------------------------------------------ persistence
    def save(self, root: Path) -> Path:
        """Write a new version folder, then point ``current.json`` at it; returns the folder."""
        root = Path(root)
        version = f"v{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**9:09d}"
        folder = root / version
        folder.mkdir(parents=True)
        self.index.save(folder / "index.faiss")
        if self.expansion is not None:
            self.augmented_index().save(folder / EXPANDED_INDEX)
        np.save(folder / "labels_by_id.npy", self.labels_by_id)
        write_json_atomic(folder / "paths_by_id.json", self.paths_by_id)
        write_json_atomic(folder / "meta.json", self._meta())
        write_json_atomic(root / POINTER, {"version": version})
        _remove_old_versions(root, keep=self.keep_versions, current=version)
        return folder

    def save_if_free(self, root: Path, workdir: Path) -> bool:
        """Save what a reader (a search, an evaluation) computed on first use, unless another
        process holds the workdir's writer lock: its save is then not overwritten, and this
        result stays in memory. True when saved."""
        with may_write(workdir) as free:
            if free:
                self.save(root)
            return free

    def _meta(self) -> dict:
        return {
            "format": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "class_names": self.class_names,
            "decision": None if self.policy is None else self.policy.to_dict(),
            "history": self.history,
            "expansion": None if self.expansion is None else self.expansion.to_dict(),
            "fusion": None if self.fusion is None else self.fusion.to_dict(),
            "items": self.size,
            "journal": self.journal,
            "keep_versions": self.keep_versions,
        }

    @classmethod
    def load(
        cls,
        root: Path,
        *,
        expected_fingerprint: str | None = None,
        use_gpu: bool | None = None,
        version: str | None = None,
    ) -> Gallery:
        """Load the current version (or ``version``); refuse one built by another model."""
        root = Path(root)
        pointer = root / POINTER
        if not pointer.is_file():
            raise InputError(f"no gallery at {root}; it is built by train.py or on first search")
        fix = "rebuild it with --rebuild_gallery (enrolments are replayed from the journal)"
        folder = root / (version or read_json(pointer, fix=fix)["version"])
        meta = read_json(folder / "meta.json", fix=fix)
        if expected_fingerprint is not None and meta["fingerprint"] != expected_fingerprint:
            raise InputError(
                f"the gallery in {root} was built with another checkpoint "
                f"({meta['fingerprint']}, this one is {expected_fingerprint}); "
                "pass the --checkpoint it was built from, or rebuild it for this one with "
                "--rebuild_gallery (enrolments are replayed from the journal)"
            )
        expansion = meta.get("expansion")
        if meta.get("format", 1) < 2:  # vote thresholds: the policy is chosen again on val
            expansion = None
        decision, fusion = meta.get("decision"), meta.get("fusion")
        gallery = cls(
            index=FlatIndex.load(folder / "index.faiss", use_gpu=use_gpu),
            labels_by_id=np.load(folder / "labels_by_id.npy"),
            paths_by_id=read_json(folder / "paths_by_id.json"),
            class_names=list(meta["class_names"]),
            fingerprint=meta["fingerprint"],
            policy=None if decision is None else DecisionPolicy.from_dict(decision),
            history=list(meta["history"]),
            expansion=None if expansion is None else GalleryExpansion.from_dict(expansion),
            fusion=None if fusion is None else Fusion.from_dict(fusion),
            journal=int(meta.get("journal", 0)),
            keep_versions=int(meta.get("keep_versions", KEEP_VERSIONS)),
        )
        if expansion is not None:
            gallery._augmented = FlatIndex.load(folder / EXPANDED_INDEX, use_gpu=use_gpu)
        return gallery


def gallery_exists(root: Path) -> bool:
    return (Path(root) / POINTER).is_file()


def gallery_versions(root: Path) -> list[str]:
    """The whole version folders on disk, oldest first (their names sort by the time of the
    save). A folder without ``meta.json``, written last, is a save that was killed: it was never
    a gallery, and is left out (the next save removes it)."""
    return [name for name in _version_folders(root) if (Path(root) / name / "meta.json").is_file()]


def _version_folders(root: Path) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(c.name for c in root.iterdir() if c.is_dir() and c.name.startswith("v"))


def stored_fingerprint(root: Path) -> str:
    """The fingerprint of the model that embedded the current gallery (its meta file only)."""
    return read_json(Path(root) / current_version(root) / "meta.json")["fingerprint"]


def current_version(root: Path) -> str | None:
    pointer = Path(root) / POINTER
    return read_json(pointer)["version"] if pointer.is_file() else None


def _remove_old_versions(root: Path, *, keep: int, current: str) -> None:
    """Delete all but the newest ``keep`` versions, and what killed saves left; the current
    one always stays. Only a writer saves (the workdir lock), so no other save is under way."""
    whole = set(gallery_versions(root))
    for name in _version_folders(root):
        if name not in whole and name != current:
            shutil.rmtree(root / name, ignore_errors=True)
    versions = [v for v in sorted(whole) if v != current]
    for name in versions[: max(0, len(versions) - (keep - 1))]:
        shutil.rmtree(root / name, ignore_errors=True)


def now() -> str:
    """The local time stamp of every logged entry (history, journal, corrections)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S")
