"""Which epoch's model is the best one, and the counters a resume must restore to keep choosing."""

from __future__ import annotations

from dataclasses import dataclass

from retrieval.metrics import RetrievalMetrics


@dataclass
class Progress:
    """Counters that a resume must restore exactly."""

    next_epoch: int = 0
    best_recall_at_1: float = -1.0
    best_map: float = -1.0  # breaks Recall@1 ties (small val sets saturate Recall@1 early)
    best_epoch: int = -1
    bad_epochs: int = 0  # phase-2 epochs since the last improvement
    train_seconds: float = 0.0  # wall time of finished epochs, validation included


def is_better(
    metrics: RetrievalMetrics, progress: Progress, *, select_on: str = "recall_at_1"
) -> bool:
    """Higher val Recall@1 wins, ties broken by mAP; ``select_on="map"``: the other way round.

    mAP scores the whole ranking, so it still separates checkpoints on a val split of a few
    dozen photos where Recall@1 moves in steps of one query (1/55 on dogs_kaggle).
    """
    now, best = (metrics.recall_at_1, metrics.map), (progress.best_recall_at_1, progress.best_map)
    if select_on == "map":
        now, best = now[::-1], best[::-1]
    return now > best
