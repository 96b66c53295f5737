"""``evaluate.py --open_set``: calibrate new-individual detection on val, report on a split.

Calibration always uses the val split (never test); the report is measured on the chosen split
with the same held-out classes. The calibration is stored with the gallery, so ``search.py``
rejects probable new individuals and prints P(same individual) from then on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.data.records import ImageRecord, labels_of
from retrieval.io import write_json_atomic
from retrieval.open_set import (
    OpenSetCalibration,
    calibrate_from_scores,
    choose_unknown_classes,
    open_set_scores,
    simulate_open_set,
)
from retrieval.open_set_report import OpenSetReport, open_set_report
from retrieval.workspace import VOTE_TOP_N, Workspace

CAVEAT = (
    "the held-out classes were seen in training, so these figures are optimistic; "
    "for the honest number train without those classes and keep them as queries"
)


@dataclass(frozen=True)
class OpenSetRun:
    report: OpenSetReport  # on the chosen split
    calibration_report: OpenSetReport  # on val (in-sample)
    calibration: OpenSetCalibration
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
    """Hold out ``fraction`` of the val classes as unknown, calibrate on val, score ``split``."""
    index = ws.gallery.index
    gallery_labels = ws.gallery.labels_by_id[index.ids()]
    gallery_embeddings = index.reconstruct_all()
    val_embeddings, val_labels = _labelled(ws, val, "open set: val")
    unknown = choose_unknown_classes(np.unique(val_labels), fraction=fraction, seed=seed)

    def scores(embeddings, labels):
        data = simulate_open_set(gallery_labels, gallery_embeddings, labels, embeddings, unknown)
        return open_set_scores(data, top_n=VOTE_TOP_N)

    val_scores = scores(val_embeddings, val_labels)
    calibration = calibrate_from_scores(val_scores, target_false_accept_rate=target_far)
    split_scores = val_scores
    if split != "val":
        split_scores = scores(*_labelled(ws, queries, f"open set: {split}"))
    names = [ws.gallery.class_names[i] for i in unknown]
    return OpenSetRun(
        report=open_set_report(split_scores, calibration),
        calibration_report=open_set_report(val_scores, calibration),
        calibration=calibration,
        unknown_classes=names,
    )


def save_open_set(ws: Workspace, run: OpenSetRun, *, split: str, results: Path, **settings):
    """Write results/open_set_metrics.json and store the calibration with the gallery."""
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
            "calibration": run.calibration.to_dict(),
            "caveat": CAVEAT,
        },
    )
    ws.gallery.open_set = run.calibration.to_dict()
    ws.gallery.history.append(
        {
            "event": "open_set_calibrate",
            "target_false_accept_rate": run.calibration.target_false_accept_rate,
            "threshold": run.calibration.threshold_score,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
    )
    ws.gallery.save(ws.gallery_root)
    return path
