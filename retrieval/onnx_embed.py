"""Embedding images with an exported ONNX model, without PyTorch (issue 6 item 3).

A search machine or a web service should not need torch, torchvision and timm to answer a
query: ``python -m retrieval.export`` writes the embedding model as ONNX (uint8 input,
normalisation inside) with a JSON sidecar that describes it, and ``OnnxEmbedder`` runs it
with onnxruntime. Preprocessing is re-done here in PIL/numpy, pixel for pixel the same as
``retrieval.data.transforms.build_eval_transform`` (tests/test_export.py checks equality), so
embeddings match the PyTorch path and a gallery built by either can answer the other's queries.

``OnnxWorkspace`` pairs an embedder with the gallery saved by the PyTorch path, offering the
``gallery`` and ``embed`` that ``retrieval.query`` uses, so ``search.py`` can answer from it.

This module imports only numpy, PIL, onnxruntime and torch-free parts of the package (faiss
too, once a workspace is opened).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort
from PIL import Image

from retrieval.data.images import load_rgb
from retrieval.errors import InputError
from retrieval.io import read_json

if TYPE_CHECKING:
    from retrieval.data.records import ImageRecord
    from retrieval.serving.gallery import Gallery

SIDECAR_FORMAT = 1
SIDECAR_KIND = "retrieval-onnx-embedder"
# Identity keys that the export also writes into the ONNX file's metadata_props: a sidecar
# whose values differ from the file's belongs to another export and is refused.
METADATA_KEYS = ("fingerprint", "backbone", "embedding_dim", "image_size")
_REQUIRED_KEYS = ("fingerprint", "backbone", "embedding_dim", "image_size", "input", "output")


def sidecar_path(onnx_path: Path) -> Path:
    """``model.onnx`` -> ``model.onnx.json``: the description written beside the model."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(onnx_path.name + ".json")


def read_sidecar(onnx_path: Path) -> dict[str, Any]:
    """The sidecar of ``onnx_path``, checked; ``InputError`` names what is missing and why."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise InputError(
            f"ONNX model {onnx_path} not found; export one with "
            "python -m retrieval.export --checkpoint PATH --onnx model.onnx"
        )
    path = sidecar_path(onnx_path)
    fix = f"re-export the model with python -m retrieval.export --onnx {onnx_path}"
    try:
        meta = read_json(path, fix=fix)
    except FileNotFoundError:
        raise InputError(f"{path} not found (the description of {onnx_path}); {fix}") from None
    if not isinstance(meta, dict) or meta.get("kind") != SIDECAR_KIND:
        raise InputError(f"{path} is not a sidecar written by retrieval.export; {fix}")
    if meta.get("format") != SIDECAR_FORMAT:
        raise InputError(
            f"{path} has sidecar format {meta.get('format')!r}, this version reads "
            f"{SIDECAR_FORMAT}; {fix}"
        )
    missing = [key for key in _REQUIRED_KEYS if key not in meta]
    if missing:
        raise InputError(f"{path} lacks {', '.join(missing)}; {fix}")
    return meta


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    """Shorter side -> ``size`` with bicubic resampling, aspect kept (torchvision ``Resize``).

    Same arithmetic as torchvision's ``_compute_resized_output_size``: the longer side is
    ``int(size * long / short)`` (truncated), and an image already at size is left alone.
    """
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if w <= h else (new_long, size)
    if (new_w, new_h) == (w, h):
        return image
    return image.resize((new_w, new_h), Image.Resampling.BICUBIC)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """Central ``size`` x ``size`` window, offsets rounded as torchvision's ``CenterCrop``.

    torchvision uses Python's ``round`` (halves to even), so an odd margin of 1 crops at 0,
    of 3 at 2: we do the same to get the same pixels. The image must be at least ``size``.
    """
    w, h = image.size
    assert w >= size and h >= size, "resize_shorter_side runs first"
    top = round((h - size) / 2.0)
    left = round((w - size) / 2.0)
    return image.crop((left, top, left + size, top + size))


def preprocess(image: Image.Image, image_size: int) -> np.ndarray:
    """RGB PIL image -> (3, image_size, image_size) uint8, as ``build_eval_transform`` gives."""
    image = center_crop(resize_shorter_side(image, image_size), image_size)
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))


class OnnxEmbedder:
    """An exported embedding model and its preprocessing: image paths -> unit vectors.

    ``providers`` are onnxruntime execution providers, CPU by default (the point of this path
    is a machine without a GPU stack); pass ``["CUDAExecutionProvider", ...]`` to use one.
    """

    def __init__(self, onnx_path: Path, *, providers: Sequence[str] | None = None) -> None:
        self.onnx_path = Path(onnx_path)
        self.meta = read_sidecar(self.onnx_path)
        self.image_size = int(self.meta["image_size"])
        self.embedding_dim = int(self.meta["embedding_dim"])
        self._input = str(self.meta["input"]["name"])
        self._output = str(self.meta["output"]["name"])
        try:
            self._session = ort.InferenceSession(
                str(self.onnx_path), providers=list(providers or ["CPUExecutionProvider"])
            )
        except Exception as err:  # onnxruntime raises its own types for a damaged file
            raise InputError(
                f"ONNX model {self.onnx_path} cannot be loaded ({type(err).__name__}: "
                f"{err!s:.200}); re-export it with python -m retrieval.export"
            ) from err
        self._check_metadata()

    def _check_metadata(self) -> None:
        """Refuse a sidecar that does not describe this ONNX file (see ``METADATA_KEYS``)."""
        stored = self._session.get_modelmeta().custom_metadata_map
        differ = [k for k in METADATA_KEYS if k in stored and stored[k] != str(self.meta[k])]
        if differ:
            raise InputError(
                f"{sidecar_path(self.onnx_path)} does not describe {self.onnx_path} "
                f"({', '.join(differ)} differ); re-export with python -m retrieval.export"
            )

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the checkpoint it came from: a saved gallery is tied to it."""
        return str(self.meta["fingerprint"])

    @property
    def class_names(self) -> list[str] | None:
        """Class index -> name, when the export recorded them."""
        names = self.meta.get("class_names")
        return list(names) if names is not None else None

    def embed_batch(self, images: np.ndarray) -> np.ndarray:
        """images: (B, 3, S, S) uint8 -> embeddings: (B, D) float32, L2-normalised."""
        if images.dtype != np.uint8 or images.ndim != 4:
            raise TypeError(
                f"expected a (B, 3, H, W) uint8 batch, got {images.dtype} {images.shape}"
            )
        (out,) = self._session.run([self._output], {self._input: images})
        return np.asarray(out, dtype=np.float32)

    def embed_paths(self, paths: Sequence[Path], batch_size: int = 32) -> np.ndarray:
        """Embed the images at ``paths`` in order: (N, D) float32, L2-normalised.

        Images are read by ``load_rgb`` (EXIF, alpha compositing) like every other path of
        the project; an unreadable file raises ``UnreadableImage`` naming it.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        chunks = []
        for start in range(0, len(paths), batch_size):
            batch = [
                preprocess(load_rgb(Path(p)), self.image_size)
                for p in paths[start : start + batch_size]
            ]
            chunks.append(self.embed_batch(np.stack(batch)))
        if not chunks:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        return np.ascontiguousarray(np.concatenate(chunks))


def onnx_gallery_fingerprint(embedder: OnnxEmbedder) -> str:
    """The fingerprint a gallery embedded by this model carries: the same string as
    ``retrieval.workspace.gallery_fingerprint(loaded, "none")`` (ONNX embeds without TTA)."""
    return f"{embedder.fingerprint}:tta=none"


@dataclass(frozen=True)
class OnnxWorkspace:
    """A saved gallery and the ONNX model it was embedded with, for search without torch.

    Offers what ``retrieval.query.answer_images`` and ``retrieval.pairs_query.score_pairs_file``
    use of a ``Workspace``: ``gallery``, ``tta`` and ``embed(records, desc=..., progress=...)``.
    """

    embedder: OnnxEmbedder
    gallery: Gallery
    batch_size: int = 32
    tta: str = "none"
    foreground = None  # no feature map to estimate it from: saliency fusions need torch

    def embed(
        self, records: Sequence[ImageRecord], *, desc: str = "embedding", progress: bool = True
    ) -> np.ndarray:
        """Embed records as the gallery was embedded: (N, D) float32, L2-normalised.

        ``desc`` and ``progress`` are accepted for ``Workspace.embed`` compatibility; no bar.
        """
        return self.embedder.embed_paths([r.path for r in records], batch_size=self.batch_size)


def open_onnx_workspace(
    onnx_path: Path, gallery_root: Path, *, batch_size: int = 32
) -> OnnxWorkspace:
    """Load the ONNX model and the gallery saved under ``gallery_root`` (``<workdir>/gallery``).

    The gallery must come from the same checkpoint (fingerprints compared) and be built
    without TTA; it is never rebuilt here, since that needs the training data and PyTorch.
    """
    from retrieval.serving.gallery import Gallery, gallery_exists  # faiss: only when searching

    embedder = OnnxEmbedder(onnx_path)
    if not gallery_exists(gallery_root):
        raise InputError(
            f"no saved gallery in {gallery_root}; build it once with the checkpoint "
            "(python search.py IMAGE or python evaluate.py), then use --onnx"
        )
    gallery = Gallery.load(gallery_root, expected_fingerprint=onnx_gallery_fingerprint(embedder))
    return OnnxWorkspace(embedder=embedder, gallery=gallery, batch_size=batch_size)
