"""Scoring one ablation cell with every query-time option, and the table over cells.

Query-time options are chosen on the val split only: flip TTA and each re-ranking method get
the parameters that give the best val identity-balanced mAP (``retrieval.rerank_tune``), the
closed-set prior its weight (``retrieval.class_prior``), and the test split (or the held-out
individuals) is scored once with them. For a search against the train gallery (dogfacenet's
Recall@1), DBA of the gallery plus alpha-QE of the queries gets its k and alpha from val
queries searched in the same gallery (``retrieval.rerank_tune.tune_gallery_qe``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from ablation_data import CellRecords
from peer import PEER_BACKBONE, load_peer

from retrieval.calibration.policy import choose_policy
from retrieval.checkpoint import load_checkpoint
from retrieval.class_prior import agreement_matrix, blend, tune_prior
from retrieval.data.records import ImageRecord
from retrieval.eval_size import choose_eval_size
from retrieval.flips import choose_flip_policy, embed_with_mirrors, mirror_report
from retrieval.inference import load_inference_model
from retrieval.input_norm import InputNorm, resolve_input_norm
from retrieval.metrics import evaluate_retrieval
from retrieval.model.pretrained import create_backbone
from retrieval.neighbours import expand_against_gallery
from retrieval.rerank_tune import (
    NO_EXPANSION,
    score_set,
    set_identity_map,
    tune_gallery_qe,
    tune_rerank,
)
from retrieval.serving.evidence import array_evidence
from retrieval.serving.rules import Rule, class_posterior
from retrieval.workspace import inference_plan

RERANKS = ("none", "qe", "kr")
VIEWS = ("plain", "tta")
# The frozen backbone under each input normalisation (retrieval.input_norm): the floor proper
# takes the backbone's own, as the product does; "floor_imagenet" the statistics used before.
FLOOR_NORMS = {"floor": "backbone", "floor_imagenet": "imagenet"}
KINDS = ("trained", *FLOOR_NORMS, "peer")  # our train.py model, the frozen backbone, the peer


class CosineBackbone(torch.nn.Module):
    """Backbone features, L2-normalised, no neck: the frozen floor and the trained peer."""

    def __init__(self, backbone: torch.nn.Module, input_norm: InputNorm) -> None:
        super().__init__()
        self.backbone = backbone
        self.input_norm = input_norm  # read by retrieval.embed

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone(images).float(), dim=1)


def _model(kind: str, model_file: Path | None, plan, image_size: int, backbone: str):
    """(model, image size, training seconds); ``kind``: one of ``KINDS`` (the floor has no file,
    so ``backbone`` names the one it freezes)."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: expected one of {KINDS}")
    if kind in FLOOR_NORMS:
        frozen, _ = create_backbone(backbone, "pypi")
        norm = resolve_input_norm(FLOOR_NORMS[kind], backbone)
        return CosineBackbone(frozen, norm).to(plan.device).eval(), image_size, 0.0
    if kind == "peer":
        trained, norm, seconds = load_peer(model_file)
        return CosineBackbone(trained, norm).to(plan.device).eval(), image_size, seconds
    loaded = load_inference_model(model_file, plan)
    return loaded.model, loaded.image_size, loaded.train_seconds


def _int_labels(*sets: Sequence[ImageRecord]) -> list[np.ndarray]:
    names = sorted({r.label for records in sets for r in records})
    index = {n: i for i, n in enumerate(names)}
    return [np.array([index[r.label] for r in records]) for records in sets]


def _views(model, records: Sequence[ImageRecord], image_size: int, plan) -> dict[str, np.ndarray]:
    """Plain, mirrored and flip-TTA embeddings of ``records``, each image embedded once a view."""
    plain, mirrored = embed_with_mirrors(
        model, records, image_size=image_size, plan=plan, progress=False
    )
    tta = plain + mirrored
    tta /= np.linalg.norm(tta, axis=1, keepdims=True)
    return {"plain": plain, "mirrored": mirrored, "tta": tta}


def _set_options(val: dict, val_labels, target: dict, target_labels, prefix: str) -> dict:
    """Every view x re-ranking on a set scored against itself, parameters from val."""
    metrics, chosen = {}, {}
    for view in VIEWS:
        for method in RERANKS:
            tuned = tune_rerank(val[view], val_labels, method)
            key = prefix + "".join(f"_{p}" for p in (view, method) if p not in ("plain", "none"))
            metrics[key] = score_set(target[view], target_labels, method, tuned.params)
            metrics[key.replace(prefix, "val_map", 1)] = tuned.val_map
            chosen[key] = tuned.params
    return {"metrics": metrics, "params": chosen}


def _posterior(x: np.ndarray, voters, voter_labels, n_classes: int, rule: Rule) -> np.ndarray:
    """(N, C) class posterior of each row of x under the decision rule, voters as gallery."""
    evidence = array_evidence(x, voters, voter_labels, n_classes, need_means=rule.needs_means)
    return class_posterior(rule, evidence)


def _closed_set(val, val_labels, target, target_labels, train, train_labels) -> dict:
    """``search.py --closed_set`` on embeddings: the decision rule and the weight chosen on
    val with train photos voting, then the target set scored with train alone and with
    train + val voting."""
    n = int(max(train_labels.max(), val_labels.max(), target_labels.max())) + 1
    evidence = array_evidence(val, train, train_labels, n, need_means=True)
    rule = choose_policy(evidence, val_labels).rule
    tuned = tune_prior(val @ val.T, _posterior(val, train, train_labels, n, rule), val_labels)
    w = tuned.params["weight"]
    out = {}
    for key, voters, voter_labels in (
        ("train", train, train_labels),
        ("all", np.vstack([train, val]), np.concatenate([train_labels, val_labels])),
    ):
        agreed = agreement_matrix(_posterior(target, voters, voter_labels, n, rule))
        out[key] = set_identity_map(blend(target @ target.T, agreed, w), target_labels)
    return {**out, "val_map": tuned.val_map, "weight": w}


def _closed_set_options(val, val_labels, target, target_labels, train, train_labels, prefix):
    """The closed-set prior per view (no re-ranking), as metrics and chosen weights."""
    metrics, chosen = {}, {}
    for view in VIEWS:
        cs = _closed_set(
            val[view], val_labels, target[view], target_labels, train[view], train_labels
        )
        key = prefix + ("_tta" if view == "tta" else "") + "_cs"
        metrics[key], metrics[key + "_train"] = cs["all"], cs["train"]
        metrics[key.replace(prefix, "val_map", 1)] = cs["val_map"]
        chosen[key] = {"weight": cs["weight"]}
    return metrics, chosen


def _eval_size(kind: str, model_file: Path | None, model, size: int, p, plan, choose: str) -> int:
    """The size a cell embeds at. ``choose`` "auto": what ``train.py`` stored (it chooses on
    val after training), else chosen on val the same way here (the floor, the peer, older
    checkpoints); "train": the training size for every model."""
    if choose == "train":
        return size if kind != "trained" else int(load_checkpoint(model_file)["image_size"])
    if kind == "trained" and "eval_image_size" in load_checkpoint(model_file):
        return size
    class_to_idx = {name: i for i, name in enumerate(sorted({r.label for r in p.train}))}
    choice = choose_eval_size(
        model, p.train, p.val, class_to_idx, train_size=size, plan=plan, progress=False
    )
    print(choice.describe(), flush=True)
    return choice.size


def score_cell(
    model_file: Path | None,
    records: CellRecords,
    *,
    mode: str,
    kind: str,
    image_size: int,
    device: str = "auto",
    backbone: str = PEER_BACKBONE,
    eval_size: str = "auto",
) -> dict:
    """Metrics of one model (``kind``: ours, the floor or the peer); protocol: module doc."""
    plan = inference_plan(device)
    model, size, train_seconds = _model(kind, model_file, plan, image_size, backbone)
    p = records.prepared
    size = _eval_size(kind, model_file, model, size, p, plan, eval_size)
    train_labels, val_labels, test_labels = _int_labels(p.train, p.val, p.test)
    val = _views(model, p.val, size, plan)
    test = _views(model, p.test, size, plan)
    gallery = _views(model, p.train, size, plan)
    if mode == "pairs":
        target, target_labels, prefix = test, test_labels, "test_map"
    else:
        (target_labels,) = _int_labels(records.held_out)
        target, prefix = _views(model, records.held_out, size, plan), "open_map"
    out = _set_options(val, val_labels, target, target_labels, prefix)
    metrics, chosen = _closed_set_options(
        val, val_labels, target, target_labels, gallery, train_labels, prefix
    )
    out["metrics"].update(metrics)
    out["params"].update(chosen)
    if mode == "gallery":
        for view in VIEWS:
            suffix = "" if view == "plain" else "_tta"
            tuned = tune_gallery_qe(val[view], val_labels, gallery[view], train_labels)
            out["params"][f"test_r1{suffix}_qe"] = tuned.params
            for tag, params in (("", NO_EXPANSION), ("_qe", tuned.params)):
                q, g = expand_against_gallery(test[view], gallery[view], **params)
                m = evaluate_retrieval(q, test_labels, g, train_labels)
                out["metrics"][f"test_r1{suffix}{tag}"] = m.recall_at_1
                out["metrics"][f"test_map{suffix}{tag}"] = m.map
    report = mirror_report(val["plain"], val["mirrored"], val_labels)
    policy = choose_flip_policy(report)
    out["mirror"] = {**report.to_dict(), "augment": policy.augment, "tta": policy.tta}
    # 6 places, so the table's 3 are rounded once (0.76951 at 4 places printed 0.769)
    out["metrics"] = {k: round(float(v), 6) for k, v in out["metrics"].items()}
    out["eval_size"] = size
    out["minutes_to_best"] = round(train_seconds / 60, 1)  # training time up to the model scored
    return out


COLUMNS = {
    "pairs": [
        ("val_map", "val mAP"),
        ("test_map", "test mAP"),
        ("test_map_tta", "+flip TTA"),
        ("test_map_qe", "+QE"),
        ("test_map_kr", "+k-recip."),
        ("test_map_tta_qe", "+TTA+QE"),
        ("test_map_tta_kr", "+TTA+k-recip."),
        ("test_map_cs_train", "+closed set (train votes)"),
        ("test_map_cs", "+closed set"),
        ("test_map_tta_cs", "+TTA+closed set"),
    ],
    "gallery": [
        ("val_map", "val mAP"),
        ("test_r1", "test R@1"),
        ("test_map", "test mAP"),
        ("test_r1_tta", "R@1 +TTA"),
        ("test_r1_qe", "R@1 +QE/DBA"),
        ("test_map_qe", "mAP +QE/DBA"),
        ("open_map", "open-set mAP"),
        ("open_map_tta", "open +TTA"),
        ("open_map_qe", "open +QE"),
        ("open_map_kr", "open +k-recip."),
        ("open_map_cs", "open +closed set"),
    ],
}


def _cell_text(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def _mirror_table(results: list[dict], variants: Sequence[str]) -> str:
    """The flip check per variant: mirror statistics on val and the policy they choose."""
    lines = [
        "| variant | mirror cos | val mAP (2+ photos) | mirrored queries | flip TTA | policy |",
        "|---|---|---|---|---|---|",
    ]
    for variant in variants:
        cells = [r["mirror"] for r in results if r["variant"] == variant]
        if not cells:
            continue
        stats = [
            _cell_text([c[k] for c in cells])
            for k in ("mirror_similarity", "plain_map", "mirrored_map", "tta_map")
        ]
        augment = sum(c["augment"] for c in cells)
        tta = sum(c["tta"] for c in cells)
        policy = f"flips {augment}/{len(cells)}, TTA {tta}/{len(cells)}"
        lines.append(f"| {variant} | " + " | ".join(stats) + f" | {policy} |")
    return "\n".join(lines) + "\n"


def write_table(results: list[dict], *, mode: str, variants: Sequence[str]) -> str:
    """Markdown: one row per variant, mean ± sample sd over its seeds; then the flip check."""
    columns = COLUMNS[mode]
    lines = [
        "| variant | seeds | " + " | ".join(title for _, title in columns) + " | mirror cos |",
        "|---|---|" + "---|" * (len(columns) + 1),
    ]
    for variant in variants:
        cells = [r for r in results if r["variant"] == variant]
        if not cells:
            continue
        row = [  # "-" where a cell was scored before the column existed (--rescore)
            _cell_text([c["metrics"][key] for c in cells if key in c["metrics"]])
            for key, _ in columns
        ]
        mirror = _cell_text([c["mirror"]["mirror_similarity"] for c in cells])
        seeds = ",".join(str(c["seed"]) for c in cells)
        lines.append(f"| {variant} | {seeds} | " + " | ".join(row) + f" | {mirror} |")
    return "\n".join(lines) + "\n\n" + _mirror_table(results, variants)
