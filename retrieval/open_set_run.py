"""``evaluate.py --open_set``: choose the new-individual check on val, report on a split.

The check is chosen on the val split (never test); the report is measured on the chosen split
with the same held-out classes. It is stored with the policy that decides each kind of search:
the gallery's (global evidence) and, where ``--local_match`` applies local matching, the
fusion's (each shortlist re-scored by local matches, as a fused search decides). So
``search.py`` and ``evaluate.py`` decline probable new individuals from then on, on either
path, in the same ``decide`` and the same unit (the calibrated confidence).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from retrieval.calibration.open_set import (
    LocalMix,
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
from retrieval.serving.fusion import Fusion
from retrieval.serving.gallery import now
from retrieval.serving.local_scores import LocalQueries
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
    policy: DecisionPolicy  # the applied path's policy with the check (global or fused)
    global_policy: DecisionPolicy  # the gallery's policy with the check, stored either way
    fusion: Fusion | None  # the applied fusion, its policy with the check; None: global only
    unknown_classes: list[str]

    @property
    def path(self) -> str:
        """Which evidence the report describes: "fused" (local matching on) or "global"."""
        return "global" if self.fusion is None else "fused"


@dataclass(frozen=True)
class _Queries:
    """The photos of a split whose individual the gallery knows: embeddings (Q, D) float32,
    labels (Q,) int64, paths (Q,)."""

    embeddings: np.ndarray
    labels: np.ndarray
    paths: list[str]


def _labelled(ws: Workspace, records: list[ImageRecord], desc: str) -> _Queries:
    c2i = ws.loaded.class_to_idx
    known = [r for r in records if r.label in c2i]
    paths = [str(r.path) for r in known]
    return _Queries(ws.embed(known, desc=desc), labels_of(known, c2i), paths)


def run_open_set(
    ws: Workspace,
    *,
    val: list[ImageRecord],
    queries: list[ImageRecord],
    split: str,
    fraction: float,
    target_far: float,
    seed: int,
    fusion: Fusion | None = None,
) -> OpenSetRun:
    """Hold out ``fraction`` of the val classes as unknown, choose the check on val, score
    ``split``. ``fusion``: the local matching ``--local_match`` applies (None: global only);
    its check is chosen on the mix re-scored by local matches, as a fused search decides, and
    the report is on that path. The global check is chosen either way (``--local_match off``
    searches read it)."""
    gallery = ws.gallery
    ids = gallery.index.ids()
    gallery_labels = gallery.labels_by_id[ids]
    gallery_embeddings = gallery.index.reconstruct_all()
    gallery_paths = [gallery.paths_by_id[i] for i in ids]
    n_classes = len(gallery.class_names)
    val_queries = _labelled(ws, val, "open set: val")
    unknown = choose_unknown_classes(np.unique(val_queries.labels), fraction=fraction, seed=seed)

    def answers(mix: _Queries, policy: DecisionPolicy, local: Fusion | None) -> OpenSetAnswers:
        data = simulate_open_set(
            gallery_labels, gallery_embeddings, mix.labels, mix.embeddings, unknown
        )
        matches = None
        if local is not None:
            photos = LocalQueries(mix.paths, ws.gallery_root, foreground=ws.foreground)
            matches = LocalMix(local, photos, gallery_paths)
        return open_set_answers(data, policy, n_classes, local=matches)

    def checked(
        policy: DecisionPolicy, local: Fusion | None
    ) -> tuple[OpenSetAnswers, DecisionPolicy]:
        unchecked = replace(policy, unknown_min_confidence=0.0)
        mix = answers(val_queries, unchecked, local)
        return mix, choose_open_set_policy(mix, unchecked, target_far)

    val_answers, global_policy = checked(gallery.policy_for(expand=False), None)
    policy = global_policy
    if fusion is not None:
        assert fusion.policy is not None, "a stored fusion carries the policy val chose for it"
        val_answers, policy = checked(fusion.policy, fusion)
        fusion = replace(fusion, policy=policy)
    split_answers = val_answers
    if split != "val":
        split_answers = answers(_labelled(ws, queries, f"open set: {split}"), policy, fusion)
    final = split_answers.with_policy(policy)
    val_final = val_answers.with_policy(policy)
    return OpenSetRun(
        report=open_set_report(final, policy.threshold, target_far),
        calibration_report=open_set_report(val_final, policy.threshold, target_far),
        selective=selective_report(final.decisions, final.query_labels, policy),
        answers=final,
        policy=policy,
        global_policy=global_policy,
        fusion=fusion,
        unknown_classes=[gallery.class_names[i] for i in unknown],
    )


def describe_path(run: OpenSetRun, stored: Fusion | None) -> str:
    """One line: the evidence the check was chosen and reported on, and whether searches that
    apply local matching are left without one (``stored``: the gallery's fusion)."""
    if run.fusion is not None:
        return (
            "open set: on the fused evidence (local matching on, each shortlist re-scored); "
            "the global check is chosen and stored too, for --local_match off"
        )
    line = "open set: on the global evidence (local matching not applied)"
    if stored is not None and (stored.policy is None or stored.policy.unknown_min_confidence == 0):
        line += (
            "; searches that apply local matching have no new-individual check yet: "
            "run evaluate.py --open_set --local_match on"
        )
    return line


def save_open_set(
    ws: Workspace, run: OpenSetRun, *, split: str, results: Path, figures: Path | None, **settings
) -> list[Path]:
    """Write results/open_set_metrics.json (+ risk-coverage files) and store the checks: the
    global one in the gallery's policy, the fused one in its fusion's policy."""
    path = results / "open_set_metrics.json"
    write_json_atomic(
        path,
        {
            "split": split,
            "calibration_split": "val",
            "evidence": run.path,
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
    gallery = ws.gallery
    gallery.policy = run.global_policy
    if run.fusion is not None:
        gallery.fusion = run.fusion
    fused = None if run.fusion is None else run.policy.unknown_min_confidence
    gallery.history.append(
        {
            "event": "open_set_calibrate",
            "target_false_accept_rate": run.report.target_false_accept_rate,
            "unknown_min_confidence": run.global_policy.unknown_min_confidence,
            "unknown_min_confidence_fused": fused,
            "time": now(),
        }
    )
    gallery.save(ws.gallery_root)
    return files
