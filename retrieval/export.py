"""Export a checkpoint's embedding model to ONNX, for search without PyTorch (issue 6 item 3).

``python -m retrieval.export --checkpoint best_model.pt --onnx model.onnx`` writes

* ``model.onnx``: input ``images`` (B, 3, S, S) uint8 RGB (batch axis dynamic), output
  ``embeddings`` (B, 512) float32, L2-normalised. ImageNet normalisation is inside the graph,
  so a user of the file only resizes and crops; the ArcFace head is not exported (search
  never uses it);
* ``model.onnx.json``: what the file is (backbone, image size, embedding size, the
  checkpoint's fingerprint that a saved gallery is tied to, class names, tensor names), so
  the ONNX model describes itself (STYLE rule 13). ``retrieval.onnx_embed`` reads both.

The legacy TorchScript exporter (``dynamo=False``) is used: it needs no ``onnxscript``, and
it traces timm's TF "same" padding (EfficientNet-lite, EfficientNetV2) at the fixed input
size into constant pads. Every export is checked against onnxruntime before it is kept.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import timm
import torch
from torch import nn

from retrieval.cli import add_bool_flag, cli_main, default_checkpoint
from retrieval.device import plan_runtime, probe_device
from retrieval.errors import InputError
from retrieval.inference import LoadedModel, load_inference_model
from retrieval.io import atomic_path, write_json_atomic
from retrieval.model.embedder import EmbeddingModel
from retrieval.onnx_embed import (
    METADATA_KEYS,
    SIDECAR_FORMAT,
    SIDECAR_KIND,
    OnnxEmbedder,
    sidecar_path,
)

INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"
DEFAULT_OPSET = 17
OPSETS = range(11, 21)  # 20: the highest the TorchScript exporter writes
MIN_COSINE = 0.999  # an export whose ONNX output drifts further from PyTorch is refused


class UInt8EmbeddingModel(nn.Module):
    """The graph that is exported: uint8 pixels -> the model's normalisation -> the model."""

    def __init__(self, model: EmbeddingModel) -> None:
        super().__init__()
        self.model = model
        norm = model.input_norm
        self.register_buffer("mean", torch.tensor(norm.mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(norm.std).view(1, 3, 1, 1) * 255.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, 3, H, W) uint8 RGB -> embeddings: (B, D) float32, L2-normalised."""
        return self.model((images.float() - self.mean) / self.std)


@dataclass(frozen=True)
class ExportResult:
    onnx_path: Path
    sidecar_path: Path
    sidecar: dict[str, Any]
    min_cosine: float  # lowest PyTorch-vs-onnxruntime cosine similarity on the check batch


def _check_opset(opset: int) -> int:
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in OPSETS:
        raise InputError(
            f"--opset {opset!r}: allowed {OPSETS.start}-{OPSETS.stop - 1} "
            f"(default {DEFAULT_OPSET}); pick one your ONNX runtime supports"
        )
    return opset


def _check_output(onnx_path: Path) -> Path:
    onnx_path = Path(onnx_path)
    if onnx_path.is_dir():
        raise InputError(f"--onnx {onnx_path} is a folder; give a file name such as model.onnx")
    return onnx_path


def _torch_export(module: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    """``torch.onnx.export`` with the TorchScript exporter, batch axis dynamic."""
    options: dict[str, Any] = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:  # torch >= 2.5
        options["dynamo"] = False
    with warnings.catch_warnings():
        # torch >= 2.9 warns that this exporter is deprecated; it is chosen on purpose above.
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message="The feature will be removed")
        # Shape checks traced as constants (GeM's feature-map check, "same" padding) are
        # right for the fixed image size; a batch-size dependence would be caught by
        # _verify, which runs another batch size than the traced one.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
            **options,
        )


def _sidecar(loaded: LoadedModel, *, opset: int, class_names: bool) -> dict[str, Any]:
    size = loaded.image_size
    dim = int(loaded.model.embedding_dim)
    norm = loaded.model.input_norm
    return {
        "format": SIDECAR_FORMAT,
        "kind": SIDECAR_KIND,
        "fingerprint": loaded.fingerprint,
        "backbone": loaded.backbone,
        "embedding_dim": dim,
        "pooling": getattr(loaded.model, "pooling", "avg"),
        "image_size": size,
        "input_norm": {"mean": list(norm.mean), "std": list(norm.std)},
        "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": ["batch", 3, size, size]},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", dim]},
        "preprocessing": (
            f"RGB, EXIF upright, alpha composited on the ImageNet mean colour; shorter side to "
            f"{size} (bicubic), centre crop {size}x{size}, uint8 CHW; the normalisation "
            "(input_norm, RGB in 0..1) is inside the model; outputs are L2-normalised"
        ),
        "class_names": loaded.class_names if class_names else None,
        "checkpoint": str(loaded.checkpoint),
        "opset": opset,
        "versions": {"torch": torch.__version__, "timm": timm.__version__},
    }


def _stamp(path: Path, meta: dict[str, Any]) -> None:
    """Write the identity keys into the ONNX file's own metadata too, so a sidecar that does
    not belong to the file (an export interrupted between the two writes) is detected."""
    model = onnx.load(str(path))
    for key in METADATA_KEYS:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(meta[key])
    onnx.save(model, str(path))


def _verify(module: nn.Module, onnx_path: Path, image_size: int, dim: int) -> float:
    """Lowest cosine between PyTorch and onnxruntime on 3 random images (a batch of 3 also
    proves the batch axis is dynamic: the export traced a batch of 2)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 3, image_size, image_size), dtype=np.uint8)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: images})
    with torch.inference_mode():
        want = module(torch.from_numpy(images)).numpy()
    assert got.shape == (3, dim), f"ONNX output shape {got.shape}, expected (3, {dim})"
    return float(np.min(np.sum(got * want, axis=1)))


def export_onnx(
    checkpoint: Path, onnx_path: Path, *, opset: int = DEFAULT_OPSET, class_names: bool = True
) -> ExportResult:
    """Write the checkpoint's embedding model as ONNX plus its JSON sidecar (each atomically).

    Runs on CPU in eval mode. Raises ``RuntimeError`` when onnxruntime's embeddings differ
    from PyTorch's (cosine below ``MIN_COSINE``): an exporter bug, not a user error.
    """
    opset = _check_opset(opset)
    onnx_path = _check_output(onnx_path)
    plan = replace(plan_runtime(probe_device(device="cpu")), channels_last=False)
    loaded = load_inference_model(Path(checkpoint), plan)
    module = UInt8EmbeddingModel(loaded.model).eval()
    size, dim = loaded.image_size, int(loaded.model.embedding_dim)
    example = torch.zeros((2, 3, size, size), dtype=torch.uint8)
    meta = _sidecar(loaded, opset=opset, class_names=class_names)
    with atomic_path(onnx_path) as tmp:
        _torch_export(module, example, tmp, opset)
        _stamp(tmp, meta)
        min_cosine = _verify(module, tmp, size, dim)
        if min_cosine < MIN_COSINE:
            raise RuntimeError(
                f"ONNX export of {checkpoint} disagrees with PyTorch (cosine {min_cosine:.5f} "
                f"< {MIN_COSINE}); nothing was written. Try another --opset"
            )
    write_json_atomic(sidecar_path(onnx_path), meta)
    return ExportResult(onnx_path, sidecar_path(onnx_path), meta, min_cosine)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m retrieval.export", description=__doc__.splitlines()[0]
    )
    p.add_argument("--workdir", default=".", help="run folder (for the default --checkpoint)")
    p.add_argument(
        "--checkpoint",
        default=None,
        help="model checkpoint (default: the best model of the workdir's current run)",
    )
    p.add_argument(
        "--onnx", default=None, help="ONNX file to write (default: <workdir>/model.onnx)"
    )
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset version")
    add_bool_flag(p, "class_names", "record class names in the sidecar (default: true)")
    return p


def _run(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir)
    onnx_path = Path(args.onnx) if args.onnx else workdir / "model.onnx"
    result = export_onnx(
        default_checkpoint(workdir, args.checkpoint),
        onnx_path,
        opset=args.opset,
        class_names=args.class_names is not False,
    )
    OnnxEmbedder(result.onnx_path)  # the pair loads as search will load it
    print(
        f"wrote {result.onnx_path} and {result.sidecar_path} ({result.sidecar['backbone']}, "
        f"{result.sidecar['image_size']} px, {result.sidecar['embedding_dim']}-d; "
        f"onnxruntime vs PyTorch cosine >= {result.min_cosine:.5f})"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli_main("python -m retrieval.export", build_parser, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
