"""Loading a trained embedding model for evaluation and search (no ArcFace head, no optimiser).

A checkpoint describes itself (backbone, embedding size, image size, class map), so nothing
but its path is needed. Weights are fp32 on disk: a model trained under bf16 autocast loads
and infers in fp32, fp16 or bf16 alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from retrieval import checkpoint as ckpt
from retrieval.config import LEGACY_INPUT_NORM
from retrieval.device import RuntimePlan
from retrieval.eval_size import inference_size
from retrieval.model.embedder import EmbeddingModel, build_embedding_model


@dataclass(frozen=True)
class LoadedModel:
    model: EmbeddingModel  # in eval mode, on the plan's device
    class_to_idx: dict[str, int]
    image_size: int  # what it embeds at: val's choice after training, else the train size
    backbone: str
    fingerprint: str  # weights hash + backbone + image size: what a gallery is tied to
    checkpoint: Path
    config: dict
    train_seconds: float = 0.0
    served: str = "trained"  # or "frozen backbone": training did not beat it on val

    @property
    def served_note(self) -> str:
        """One line for evaluate and search when the frozen backbone is served, else ""."""
        if self.served == "trained":
            return ""
        return (
            f"model: the {self.served} ({self.checkpoint.name}), since training did not beat it "
            "on val; the trained best is trained_model.pt beside it"
        )

    @property
    def class_names(self) -> list[str]:
        return sorted(self.class_to_idx, key=self.class_to_idx.__getitem__)


def model_fingerprint(model_hash: str, backbone: str, image_size: int) -> str:
    return f"{model_hash}:{backbone}:{image_size}"


def load_inference_model(path: Path, plan: RuntimePlan) -> LoadedModel:
    """Rebuild the embedding model of checkpoint ``path`` on ``plan.device``."""
    return inference_model_from_state(ckpt.load_checkpoint(path), path, plan)


def inference_model_from_state(state: dict, path: Path, plan: RuntimePlan) -> LoadedModel:
    """The embedding model of a checkpoint dict already read from ``path``."""
    model = build_embedding_model(
        state["backbone"],
        embedding_dim=state["embedding_dim"],
        pretrained="none",
        pooling=state.get("pooling", "avg"),
        input_norm=state.get("input_norm", LEGACY_INPUT_NORM),
        neck=state.get("neck", True),  # False: the frozen backbone, served when training lost
    )
    model.load_state_dict(state["model"])
    model.eval().to(torch.device(plan.device))
    if plan.channels_last:
        model.to(memory_format=torch.channels_last)
    model_hash = state.get("model_hash") or ckpt.weights_hash(state["model"])
    return LoadedModel(
        model=model,
        class_to_idx=dict(state["class_to_idx"]),
        image_size=inference_size(state),
        backbone=state["backbone"],
        fingerprint=model_fingerprint(model_hash, state["backbone"], inference_size(state)),
        checkpoint=path,
        config=state["config"],
        train_seconds=float(state.get("progress", {}).get("train_seconds", 0.0)),
        served=state.get("served", "trained"),
    )
