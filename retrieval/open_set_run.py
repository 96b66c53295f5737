"""``evaluate.py --open_set``: choose the new-individual check on val, report on a split.

The check is chosen on the val split (never test); the report is measured on the chosen split
with the same held-out classes. It is stored with the gallery's decision policy, so
``search.py`` and ``evaluate.py`` decline probable new individuals from then on, in the same
``decide`` and the same unit (the calibrated confidence).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from retrieval.calibration.open_set import (
    OpenSetAnswers,
    choose_open_set_policy,
    choose_unknown_classes,
    open_set_answers,
    simulate_open_set,
)
from retrieval.data.records import ImageRecord, labels_of
from retrieval.io import write_json_atomic
from retrieval.open_set_report import OpenSetReport, open_set_report
from retrieval.report.selective import SelectiveReport, selective_report, write_selective
from retrieval.serving.decide import DecisionPolicy
from retrieval.workspace import Workspace

CAVEAT = (
    "the held-out classes were seen in training, so these figures are optimistic; "
    "for the honest number train without those classes and keep them as queries"
)


@dataclass(frozen=True)
class OpenSetRun:
    report: OpenSetReport  # on the chosen split
    calibration_report: OpenSetReport  # on val (in-sample)
    selective: SelectiveReport  # the decisions with the check, on the chosen split's mix
    answers: OpenSetAnswers  # the chosen split's mix, decided with the check
    policy: DecisionPolicy  # the gallery's policy with the check
    unknown_classes: list[str]


def _labelled(ws: Workspace, records: list[ImageRecord], desc: str):
    c2i = ws.loaded.class_to_idx
    known = [r for r in records if r.label in c2i]
    return ws.embed(known, desc=desc), labels_of(known, c2i)


def run_open_set(
    ws: Workspace,
    *,
    val: list[ImageRecord],
    queries: list[ImageRecord],
    split: str,
    fraction: float,
    target_far: float,
    seed: int,
) -> OpenSetRun:
    """Hold out ``fraction`` of the val classes as unknown, choose the check on val, score
    ``split``."""
    gallery = ws.gallery
    index = gallery.index
    gallery_labels = gallery.labels_by_id[index.ids()]
    gallery_embeddings = index.reconstruct_all()
    policy = gallery.policy_for(expand=False)
    n_classes = len(gallery.class_names)
    val_embeddings, val_labels = _labelled(ws, val, "open set: val")
    unknown = choose_unknown_classes(np.unique(val_labels), fraction=fraction, seed=seed)

    unchecked = replace(policy, unknown_min_confidence=0.0)

    def answers(embeddings, labels):
        data = simulate_open_set(gallery_labels, gallery_embeddings, labels, embeddings, unknown)
        return open_set_answers(data, unchecked, n_classes)

    val_answers = answers(val_embeddings, val_labels)
    checked = choose_open_set_policy(val_answers, unchecked, target_far)
    split_answers = val_answers
    if split != "val":
        split_answers = answers(*_labelled(ws, queries, f"open set: {split}"))
    final = split_answers.with_policy(checked)
    val_final = val_answers.with_policy(checked)
    return OpenSetRun(
        report=open_set_report(final, checked.threshold, target_far),
        calibration_report=open_set_report(val_final, checked.threshold, target_far),
        selective=selective_report(final.decisions, final.query_labels, checked),
        answers=final,
        policy=checked,
        unknown_classes=[gallery.class_names[i] for i in unknown],
    )


def save_open_set(
    ws: Workspace, run: OpenSetRun, *, split: str, results: Path, figures: Path | None, **settings
) -> list[Path]:
    """Write results/open_set_metrics.json (+ risk-coverage files) and store the check."""
    path = results / "open_set_metrics.json"
    write_json_atomic(
        path,
        {
            "split": split,
            "calibration_split": "val",
            "unknown_classes": run.unknown_classes,
            **settings,
            "report": run.report.to_dict(),
            "report_calibration_split": run.calibration_report.to_dict(),
            "decision": run.selective.decision_dict(),
            "coverage_at_accuracy": run.selective.coverage_at_accuracy,
            "caveat": CAVEAT,
        },
    )
    files = [path]
    files += write_selective(
        run.answers.confidence, run.answers.correct, results, figures, f"open_set_{split}"
    )
    ws.gallery.policy = run.policy
    ws.gallery.history.append(
        {
            "event": "open_set_calibrate",
            "target_false_accept_rate": run.report.target_false_accept_rate,
            "unknown_min_confidence": run.policy.unknown_min_confidence,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
    )
    ws.gallery.save(ws.gallery_root)
    return files
