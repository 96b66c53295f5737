"""The frozen backbone as a candidate model: training has to beat it on val to be served.

On hard data a short run can end at or under its frozen floor (bench/RESULTS.md: most levers
land a few points over it, some under). The run then says so and ``best_model.pt``, which
search, evaluate and the gallery read, becomes the frozen backbone (no neck: its own
L2-normalised features); the trained best is kept as ``trained_model.pt``. A later resume puts
the trained best back first, so training keeps choosing among its own epochs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retrieval import checkpoint as ckpt
from retrieval.config import RunConfig
from retrieval.data.prepare import PreparedData
from retrieval.data.transforms import build_eval_transform
from retrieval.device import RuntimePlan
from retrieval.metrics import RetrievalMetrics
from retrieval.model.embedder import EmbeddingModel, build_embedding_model
from retrieval.selective import accuracy_stderr
from retrieval.training.selection import Progress, is_better
from retrieval.training.validate import validate

TRAINED = "trained_model.pt"  # the trained best while best_model.pt is the frozen backbone
FROZEN = "frozen backbone"


@dataclass(frozen=True)
class ServedChoice:
    """Which model the workdir serves, with the val figures the choice rests on."""

    served: str  # "trained" | FROZEN
    trained_recall_at_1: float
    trained_map: float
    frozen_recall_at_1: float
    frozen_map: float
    val_queries: int

    def describe(self) -> str:
        stderr = accuracy_stderr(self.trained_recall_at_1, self.val_queries)
        figures = (
            f"val Recall@1 {self.trained_recall_at_1:.3f} trained vs "
            f"{self.frozen_recall_at_1:.3f} frozen (+- {stderr:.3f} on {self.val_queries} "
            f"photos), mAP {self.trained_map:.3f} vs {self.frozen_map:.3f}"
        )
        if self.served == FROZEN:
            return (
                f"model: training did not beat the frozen backbone on val ({figures}); the "
                f"gallery serves the frozen backbone (best_model.pt), the trained best is kept "
                f"as {TRAINED}. More epochs, more data or other settings may change this."
            )
        return f"model: the trained model is served; the frozen backbone is not better ({figures})"


def frozen_model(cfg: RunConfig) -> EmbeddingModel:
    """The backbone the run started from, as it was: its own pooling, no neck."""
    m = cfg.model
    return build_embedding_model(
        m.backbone, pretrained=m.pretrained, input_norm=m.input_norm, neck=False
    ).eval()


def restore_trained_best(directory: Path, *, fresh: bool) -> None:
    """Before a run: the trained best back in ``best_model.pt`` (a resume keeps choosing among
    its own epochs), or, for a fresh run, the previous run's trained best gone."""
    trained = directory / TRAINED
    if not trained.exists():
        return
    if fresh:
        trained.unlink()
    else:
        trained.replace(directory / ckpt.BEST)


def choose_served_model(
    cfg: RunConfig,
    prepared: PreparedData,
    plan: RuntimePlan,
    progress: Progress,
    directory: Path,
) -> ServedChoice | None:
    """Validate the frozen backbone as training validates its epochs and serve the better one
    from ``directory`` (the run's checkpoints, where ``best_model.pt`` is).

    None when there is nothing to compare: no val split, or a backbone without pretrained
    weights (``--pretrained none``), whose frozen features mean nothing.
    """
    if cfg.model.pretrained == "none" or progress.best_recall_at_1 < 0 or not prepared.val:
        return None
    model = frozen_model(cfg).to(plan.device)
    metrics = validate(
        model,
        gallery=prepared.train,
        queries=prepared.val,
        class_to_idx=prepared.class_to_idx,
        transform=build_eval_transform(cfg.data.image_size),
        plan=plan,
        batch_size=cfg.train.eval_batch_size,
        progress=True,
    )
    assert metrics is not None  # val and train are not empty here
    frozen_wins = is_better(metrics, progress, select_on=cfg.train.select_on)
    if frozen_wins:
        best = directory / ckpt.BEST
        best.replace(directory / TRAINED)
        ckpt.save_atomic(_frozen_state(cfg, model, metrics, prepared), best)
    return ServedChoice(
        served=FROZEN if frozen_wins else "trained",
        trained_recall_at_1=progress.best_recall_at_1,
        trained_map=progress.best_map,
        frozen_recall_at_1=metrics.recall_at_1,
        frozen_map=metrics.map,
        val_queries=len(prepared.val),
    )


def _frozen_state(
    cfg: RunConfig, model: EmbeddingModel, metrics: RetrievalMetrics, prepared: PreparedData
) -> dict[str, Any]:
    """A checkpoint that loads like a trained one (retrieval.inference), with no neck."""
    weights = ckpt.fp32_state_dict(model)
    return {
        "format": ckpt.FORMAT_VERSION,
        "model": weights,
        "model_hash": ckpt.weights_hash(weights),
        "served": FROZEN,
        "neck": False,
        "val_metrics": {"recall_at_1": metrics.recall_at_1, "map": metrics.map},
        "config": cfg.to_dict(),
        "class_to_idx": prepared.class_to_idx,
        "backbone": cfg.model.backbone,
        "embedding_dim": model.embedding_dim,
        "pooling": "avg",
        "input_norm": cfg.model.input_norm,
        "image_size": cfg.data.image_size,
        "versions": ckpt.library_versions(),
    }
