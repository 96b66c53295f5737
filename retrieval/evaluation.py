"""The evaluation report (SPEC 4): retrieval metrics, the product's decisions, saved outputs.

Gallery = train-split embeddings (the saved gallery), queries = the val or test split. The
decisions come from the same ``decide`` and stored policy as ``search.py``, so what is
measured here is what a user is answered.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retrieval.config import RunConfig
from retrieval.data.records import ImageRecord, labels_of
from retrieval.embed import EmbedTimer
from retrieval.io import atomic_path, write_json_atomic
from retrieval.metrics import RetrievalMetrics, confusion_pairs, evaluate_retrieval
from retrieval.report.selective import SelectiveReport, format_selective, selective_report
from retrieval.serving.decide import Decision, DecisionPolicy, predicted_labels
from retrieval.serving.evidence import decide_in_gallery
from retrieval.serving.gallery import now
from retrieval.serving.local_scores import LocalQueries
from retrieval.workspace import Workspace

BENCHMARK_COLUMNS = (
    "timestamp",
    "version",
    "split",
    "backbone",
    "loss",
    "embedding_dim",
    "augmentation",
    "cv_map",
    "identity_balanced_map",
    "recall_at_1",
    "recall_at_5",
    "best_identity_ap",
    "worst_identity_ap",
    "decision_accuracy",
    "decision_coverage",
    "train_time_min",
    "inference_images_per_s",
    "notes",
)


@dataclass(frozen=True)
class EvaluationReport:
    split: str
    metrics: RetrievalMetrics
    selective: SelectiveReport
    decisions: list[Decision]
    query_paths: list[str]
    truth: np.ndarray  # (Q,) int64 class of each query
    confusions: list[tuple[str, str, int]]
    inference_images_per_s: float
    expansion: dict | None = None  # --rerank qe: what val chose (GalleryExpansion.to_dict)
    policy: DecisionPolicy = field(default_factory=DecisionPolicy)  # the one that decided
    local_match: bool = False  # the shortlists were re-scored by local matches


def evaluate_split(
    ws: Workspace,
    queries: list[ImageRecord],
    *,
    split: str,
    expand: bool = False,
    progress: bool = True,
    local: Callable[[list[str]], LocalQueries | None] | None = None,
) -> tuple[EvaluationReport, dict]:
    """Metrics and decisions of ``queries`` against the gallery (``expand``: with its stored
    query expansion; ``local``: the local matching photo search would apply, given the query
    paths); returns the report and the arrays the figures need."""
    c2i = ws.loaded.class_to_idx
    known = [r for r in queries if r.label in c2i]
    if not known:
        raise ValueError(f"the {split} split has no query whose class is in the gallery")
    timer = EmbedTimer()
    query_embeddings = ws.embed(known, desc=f"{split}: queries", progress=progress, timer=timer)
    truth = labels_of(known, c2i)
    gallery = ws.gallery
    plain = query_embeddings
    query_embeddings, index = gallery.search_space(query_embeddings, expand=expand)
    gallery_labels = gallery.labels_by_id[index.ids()]
    metrics = evaluate_retrieval(query_embeddings, truth, index.reconstruct_all(), gallery_labels)
    # the plain embeddings: the search applies the expansion itself, as photo search does
    paths = [str(r.path) for r in known]
    decisions, hits, policy, inliers = decide_in_gallery(
        gallery, plain, expand=expand, local=None if local is None else local(paths)
    )
    predicted = np.where([d.accepted for d in decisions], predicted_labels(decisions), -1)
    report = EvaluationReport(
        split=split,
        metrics=metrics,
        selective=selective_report(decisions, truth, policy),
        decisions=decisions,
        query_paths=paths,
        truth=truth,
        confusions=confusion_pairs(truth, predicted, gallery.class_names, top_n=10),
        inference_images_per_s=timer.images_per_s,
        expansion=gallery.expansion.to_dict() if expand else None,
        policy=policy,
        local_match=inliers is not None,
    )
    arrays = {
        "query_embeddings": query_embeddings,
        "query_labels": truth,
        "query_paths": [str(r.path) for r in known],
        "top_paths": [row[:5] for row in hits.paths],
        "top_labels": hits.labels[:, :5],
        "top_inliers": None if inliers is None else inliers[:, :5],
    }
    return report, arrays


def write_outputs(ws: Workspace, report: EvaluationReport, results: Path) -> list[Path]:
    """metrics JSON, per-class CSV, per-query decisions CSV, and a row in benchmarks.csv."""
    results.mkdir(parents=True, exist_ok=True)
    names = ws.gallery.class_names
    m = report.metrics
    metrics_path = results / f"{report.split}_metrics.json"
    write_json_atomic(metrics_path, _metrics_json(ws, report))
    per_class_path = results / f"{report.split}_per_class.csv"
    with per_class_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "ap"])
        for label, ap in sorted(m.per_class_ap.items(), key=lambda item: -item[1]):
            writer.writerow([names[label], f"{ap:.6f}"])
    decisions_path = _write_decisions(results / f"{report.split}_decisions.csv", report, names)
    _append_benchmark(results / "benchmarks.csv", _benchmark_row(ws, report))
    return [metrics_path, per_class_path, decisions_path, results / "benchmarks.csv"]


def _write_decisions(path: Path, report: EvaluationReport, names: list[str]) -> Path:
    """One row per query: what search.py answers for that photo, beside the truth."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "true", "answer", "candidate", "confidence", "reason"])
        for image, truth, d in zip(report.query_paths, report.truth, report.decisions, strict=True):
            candidate = names[d.predicted] if d.predicted >= 0 else ""
            answer = names[d.label] if d.accepted else "unclassifiable"
            writer.writerow(
                [image, names[truth], answer, candidate, f"{d.confidence:.6f}", d.reason]
            )
    return path


def _metrics_json(ws: Workspace, report: EvaluationReport) -> dict:
    m = report.metrics
    return {
        "split": report.split,
        "checkpoint": str(ws.loaded.checkpoint),
        "model": ws.loaded.served,
        "n_queries": m.n_queries,
        "n_gallery": ws.gallery.size,
        "recall_at_1": m.recall_at_1,
        "recall_at_5": m.recall_at_5,
        "map": m.map,
        "identity_balanced_map": m.identity_balanced_map,
        "decision": report.selective.decision_dict(),
        "coverage_at_accuracy": report.selective.coverage_at_accuracy,
        "decision_policy": report.policy.to_dict(),
        "local_match": report.local_match,
        "most_confused": [{"true": a, "predicted": b, "count": n} for a, b, n in report.confusions],
        "inference_images_per_s": report.inference_images_per_s,
        "tta": ws.tta,
        "query_expansion": report.expansion,
    }


def _benchmark_row(ws: Workspace, report: EvaluationReport) -> dict:
    from retrieval import __version__

    cfg = ws.loaded.config
    m = report.metrics
    aps = list(m.per_class_ap.values())
    data, loss = cfg["data"], cfg["loss"]
    return {
        "timestamp": now(),
        "version": __version__,
        "split": report.split,
        "backbone": ws.loaded.backbone,
        "loss": f"arcface(s={loss['scale']},m={loss['margin_rad']}rad)",
        "embedding_dim": ws.loaded.model.embedding_dim,
        "augmentation": _augmentation_note(data),
        "cv_map": f"{m.map:.4f}",
        "identity_balanced_map": f"{m.identity_balanced_map:.4f}",
        "recall_at_1": f"{m.recall_at_1:.4f}",
        "recall_at_5": f"{m.recall_at_5:.4f}",
        "best_identity_ap": f"{max(aps):.4f}",
        "worst_identity_ap": f"{min(aps):.4f}",
        "decision_accuracy": f"{report.selective.accuracy_on_accepted:.4f}",
        "decision_coverage": f"{report.selective.coverage_at_target:.4f}",
        "train_time_min": f"{ws.loaded.train_seconds / 60:.2f}",
        "inference_images_per_s": f"{report.inference_images_per_s:.1f}",
        "notes": f"tta={ws.tta}; rerank={_rerank_note(report)}; "
        f"input_norm={RunConfig.from_dict(cfg).model.input_norm}; "
        f"eval_size={ws.loaded.image_size}; "
        f"checkpoint={ws.loaded.checkpoint.name}; model={ws.loaded.served}; "
        f"local_match={'on' if report.local_match else 'off'}",
    }


def _augmentation_note(data: dict) -> str:
    """The training augmentation in one token; checkpoints from before --random_erasing have
    no such key."""
    extra = "+hflip" if data["hflip"] else ""
    if data.get("random_erasing"):
        extra += f"+erase{data['random_erasing']:g}"
    return f"rrc+rot15+jitter{extra}@{data['image_size']}"


def _rerank_note(report: EvaluationReport) -> str:
    e = report.expansion
    return "none" if e is None else f"qe(k={e['k']},alpha={e['alpha']:g})"


def _append_benchmark(path: Path, row: dict) -> None:
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=BENCHMARK_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def format_report(report: EvaluationReport, policy) -> str:
    m = report.metrics
    lines = [
        f"{report.split}: {m.n_queries} queries"
        + ("" if report.expansion is None else f", {_rerank_note(report)} against a DBA'd gallery"),
        f"  Recall@1 {m.recall_at_1:.4f}   Recall@5 {m.recall_at_5:.4f}"
        + (
            "   (global embedding; the decision below reads local matches too)"
            if report.local_match
            else ""
        ),
        f"  mAP {m.map:.4f}   identity-balanced mAP {m.identity_balanced_map:.4f}",
        format_selective(report.selective, policy),
        f"  inference {report.inference_images_per_s:.1f} images/s",
    ]
    if report.confusions:
        lines.append("  most confused (true -> predicted):")
        lines += [f"    {a} -> {b}: {n}" for a, b, n in report.confusions[:5]]
    return "\n".join(lines)
