"""Checkpoints, images and PyTorch reference answers for the ONNX export tests.

A checkpoint is written with exactly the keys training writes, from a random-init tiny timm
model, so that the export and the torch-free path are compared with the real PyTorch path.
"""

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from retrieval import checkpoint as ckpt
from retrieval.config import RunConfig
from retrieval.data.records import ImageRecord
from retrieval.data.transforms import build_eval_transform
from retrieval.device import plan_runtime, probe_device
from retrieval.embed import extract_embeddings
from retrieval.inference import load_inference_model
from retrieval.model.embedder import build_embedding_model
from retrieval.serving.gallery import Gallery
from retrieval.workspace import gallery_fingerprint

IMAGE_SIZE = 48
CLASSES = ("alpha", "beta", "gamma")
# (width, height): square, wide, tall, odd margins (torchvision rounds half to even),
# smaller than the model input (upscaled), already at size.
NOISE_SIZES = [(64, 64), (97, 48), (48, 97), (120, 51), (51, 120), (30, 41), (48, 48), (201, 77)]


def write_checkpoint(
    path: Path,
    backbone: str,
    *,
    image_size: int,
    seed: int,
    pooling: str = "avg",
    input_norm: str | None = None,
) -> Path:
    """A minimal checkpoint with the keys ``load_inference_model`` reads, as training writes it.

    ``input_norm=None``: no such key, as in checkpoints written before the choice existed.
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # random init, reproducible, without touching the global RNG
        model = build_embedding_model(
            backbone, embedding_dim=512, pretrained="none", pooling=pooling
        )
    weights = ckpt.fp32_state_dict(model)
    state = {
        "format": ckpt.FORMAT_VERSION,
        "model": weights,
        "model_hash": ckpt.weights_hash(weights),
        "backbone": backbone,
        "embedding_dim": 512,
        "pooling": pooling,
        "image_size": image_size,
        "class_to_idx": {name: i for i, name in enumerate(CLASSES)},
        "config": RunConfig().to_dict(),
        "progress": {"train_seconds": 0.0},
        "epoch": 0,
        "versions": ckpt.library_versions(),
    }
    if input_norm is not None:
        state["input_norm"] = input_norm
    ckpt.save_atomic(state, path)
    return path


def noise_images(folder: Path, seed: int) -> list[Path]:
    """PIL images of random noise (plus a gradient so they differ in content), varied shapes."""
    rng = np.random.default_rng(seed)
    paths = []
    for i, (w, h) in enumerate(NOISE_SIZES):
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ramp = np.linspace(0, 255, w, dtype=np.float64)[None, :, None] * rng.random(3)
        pixels = ((pixels.astype(np.float64) + ramp) / 2).astype(np.uint8)
        path = folder / f"noise_{i}.{'png' if i % 2 else 'jpg'}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def torch_embed(checkpoint: Path, paths: list[Path]) -> np.ndarray:
    """The PyTorch path: load_inference_model + extract_embeddings with the eval transform."""
    plan = cpu_plan()
    loaded = load_inference_model(checkpoint, plan)
    records = [ImageRecord(path=p.resolve(), label="", group=p.stem) for p in paths]
    return extract_embeddings(
        loaded.model,
        records,
        transform=build_eval_transform(loaded.image_size),
        plan=plan,
        batch_size=3,
        progress=False,
    )


def torch_gallery(checkpoint: Path, paths: list[Path]) -> Gallery:
    """A gallery of ``paths`` (classes in turn) embedded and fingerprinted as search does."""
    loaded = load_inference_model(checkpoint, cpu_plan())
    labels = np.arange(len(paths), dtype=np.int64) % len(CLASSES)
    return Gallery.build(
        torch_embed(checkpoint, paths),
        labels,
        [str(p.resolve()) for p in paths],
        class_names=loaded.class_names,
        fingerprint=gallery_fingerprint(loaded, "none"),
        use_gpu=False,
    )


def cpu_plan():
    return replace(plan_runtime(probe_device(device="cpu")), num_workers=0)  # no loader procs
