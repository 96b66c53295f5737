"""Local matching measured on a trained workdir (issue 36): global only against fused, and cost.

Everything runs through the product's own code: the fusion is chosen on the val split
(``retrieval.calibration.local_policy.choose_gallery_fusion``, never test), then the test photos
of known individuals are answered with and without it, on the same embeddings and the same
gallery. Reported side by side: Recall@1 (the first hit after re-scoring), mAP over the 50
hits each decision reads (mAP@50, the same cut for both), and decision accuracy answering every
photo; then the cost per query (keypoints of the query plus its matches) at several shortlist
lengths, with the gallery keypoints already cached.

    python train.py --fresh --preset demo --workdir runs/local/demo
    python bench/local_bench.py --workdir runs/local/demo --json runs/local/demo.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retrieval.calibration.fusion_fit import describe_fusion
from retrieval.calibration.local_policy import choose_gallery_fusion
from retrieval.cli import default_checkpoint
from retrieval.data.records import labels_of
from retrieval.data.scan import load_records
from retrieval.local.features import FOREGROUNDS
from retrieval.serving.decide import decide, predicted_labels
from retrieval.serving.evidence import EVIDENCE_K, gallery_evidence
from retrieval.serving.fusion import fused_evidence, fused_order
from retrieval.serving.local_scores import LocalScorer
from retrieval.workspace import open_workspace, prepare_for


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, help="a trained workdir (train.py output)")
    p.add_argument("--split", choices=["val", "test"], default="test")
    p.add_argument("--shortlists", type=int, nargs="+", default=[10, 30, 100])
    p.add_argument("--json", help="write the results here too")
    p.add_argument(
        "--unseen",
        help="manifest (filename,label) of individuals never trained on: enrol the first "
        "--enrolled photos of each, answer the others",
    )
    p.add_argument("--enrolled", type=int, default=1, help="photos enrolled per never-seen one")
    p.add_argument(
        "--foreground",
        choices=["auto", *FOREGROUNDS],
        default="auto",
        help="where keypoints are kept: auto = val chooses (the product's default), or force "
        "every keypoint (none) or the backbone's saliency foreground",
    )
    return p


def map_at_k(labels: np.ndarray, truth: np.ndarray, class_sizes: np.ndarray) -> float:
    """Mean AP over each query's listed hits: labels (Q, k), truth (Q,), the gallery's photos
    per class (C,); a class with more photos than k is scored against k."""
    relevant = labels == truth[:, None]
    ranks = np.arange(1, labels.shape[1] + 1)
    precision = np.cumsum(relevant, axis=1) / ranks
    totals = np.minimum(class_sizes[truth], labels.shape[1])
    return float(np.mean((precision * relevant).sum(axis=1) / np.maximum(totals, 1)))


def scores_of(evidence, decisions, truth: np.ndarray) -> dict[str, float]:
    return {
        "recall_at_1": float(np.mean(evidence.hit_labels[:, 0] == truth)),
        "map_at_50": map_at_k(evidence.hit_labels, truth, evidence.class_sizes),
        "decision_accuracy": float(np.mean(predicted_labels(decisions) == truth)),
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    workdir = Path(args.workdir)
    ws = open_workspace(workdir, default_checkpoint(workdir, None))
    prepared = prepare_for(ws.loaded, workdir, data=None, image_root=None)
    gallery = ws.gallery
    started = time.perf_counter()
    foregrounds = FOREGROUNDS if args.foreground == "auto" else (args.foreground,)
    fusion = choose_gallery_fusion(ws, prepared.val, foregrounds=foregrounds)
    choose_seconds = time.perf_counter() - started
    assert fusion is not None, "the val split has fewer than 2 photos of known individuals"
    print(describe_fusion(fusion, "auto"))
    print("val decision accuracy by (foreground, geometry):", fusion.evidence["settings"])

    split = prepared.val if args.split == "val" else prepared.test
    known = [r for r in split if r.label in gallery.live_classes()]
    truth = labels_of(known, ws.loaded.class_to_idx)
    queries = ws.embed(known, desc=f"{args.split} queries")
    policy = gallery.policy_for(expand=False)
    scorer = LocalScorer.for_fusion(ws.gallery_root, fusion, foreground=ws.foreground)
    plain, fused, cost, extract_ms = compare(
        gallery, queries, known, truth, policy, fusion, scorer, args.shortlists
    )
    result = {
        "workdir": str(workdir),
        "split": args.split,
        "queries": len(known),
        "gallery": gallery.size,
        "fusion": {k: v for k, v in fusion.to_dict().items() if k not in ("policy",)},
        "fusion_helps_on_val": fusion.helps,
        "foregrounds_compared": list(foregrounds),
        "global": plain,
        "fused": fused,
        "fused_rule": fusion.policy.rule.describe(),
        "global_rule": policy.rule.describe(),
        "choose_on_val_seconds": round(choose_seconds, 1),
        "ms_per_query": {str(k): v for k, v in cost.items()},
        "extract_ms_per_query": round(extract_ms, 1),
    }
    _print(result)
    if args.unseen:
        result["unseen"] = unseen(ws, Path(args.unseen), args.enrolled, policy, fusion, scorer)
        _print(result["unseen"])
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, default=float))
    return 0


def compare(gallery, queries, records, truth, policy, fusion, scorer, shortlists=()):
    """Global only and fused scores of ``queries`` (Q, D) answered against ``gallery``, and
    the cost per query at each of ``shortlists`` (ms; the keypoints of the query included)."""
    evidence, hits = gallery_evidence(gallery, queries, k=EVIDENCE_K, need_means=True)
    plain = scores_of(evidence, decide(evidence, policy), truth)
    paths = [str(r.path) for r in records]
    longest = max([fusion.shortlist, *shortlists])
    scorer.gallery_features([p for row in hits.paths for p in row[:longest]])
    t0 = time.perf_counter()
    query_features = scorer.query_features(paths)
    extract_ms = 1000 * (time.perf_counter() - t0) / len(paths)
    cost = {}
    for b in sorted(shortlists):
        t0 = time.perf_counter()
        scorer.inliers(query_features, hits.paths, b)
        cost[b] = extract_ms + 1000 * (time.perf_counter() - t0) / len(paths)
    inliers = scorer.inliers(query_features, hits.paths, fusion.shortlist)
    scores, order = fused_order(fusion, evidence.hit_scores, inliers, evidence.hit_labels)
    fused_ev = fused_evidence(evidence, scores, order)
    fused = scores_of(fused_ev, decide(fused_ev, fusion.policy), truth)
    fused.update(inlier_separation(inliers, evidence.hit_labels, truth))
    return plain, fused, cost, extract_ms


def inlier_separation(inliers: np.ndarray, labels: np.ndarray, truth: np.ndarray) -> dict:
    """How well the inlier count alone tells the same individual from another among the
    shortlisted hits: the median count of each, and the AUROC of the count (0.5: no signal).
    Background keypoints matching between different animals pull the two medians together.
    inliers (Q, B); labels (Q, k >= B) with -1 for no hit; truth (Q,)."""
    b = inliers.shape[1]
    hit = labels[:, :b]
    valid = hit >= 0
    same = (hit == truth[:, None])[valid]
    counts = inliers[valid]
    if same.all() or not same.any():
        return {}
    return {
        "inliers_same_median": float(np.median(counts[same])),
        "inliers_other_median": float(np.median(counts[~same])),
        "inlier_auroc": float(roc_auc_score(same, counts)),
    }


def unseen(ws, manifest: Path, enrolled: int, policy, fusion, scorer) -> dict:
    """Individuals never trained on, as a field user meets them: the first ``enrolled``
    photos of each are enrolled (in memory, embedded as ``--enroll`` does), and their other
    photos are answered against the grown gallery, global only and fused."""
    by_label: dict[str, list] = {}
    for record in sorted(load_records(manifest)):
        by_label.setdefault(record.label, []).append(record)
    enrol = [r for photos in by_label.values() if len(photos) > enrolled for r in photos[:enrolled]]
    asked = [r for photos in by_label.values() if len(photos) > enrolled for r in photos[enrolled:]]
    gallery = ws.gallery
    gallery.add_items(
        ws.embed(enrol, desc="enrolling never-seen"),
        [r.label for r in enrol],
        [str(r.path) for r in enrol],
    )
    truth = np.array([gallery.class_index(r.label) for r in asked], dtype=np.int64)
    queries = ws.embed(asked, desc="never-seen queries")
    plain, fused, _, _ = compare(gallery, queries, asked, truth, policy, fusion, scorer)
    individuals = len({r.label for r in enrol})
    return {
        "split": f"never-seen ({individuals} individuals, {enrolled} enrolled each)",
        "queries": len(asked),
        "gallery": gallery.size,
        "global": plain,
        "fused": fused,
        "global_rule": policy.rule.describe(),
        "fused_rule": fusion.policy.rule.describe(),
    }


def _print(r: dict) -> None:
    print(f"{r['split']}: {r['queries']} queries, gallery {r['gallery']} photos")
    print(f"{'':22}{'global':>10}{'fused':>10}")
    for key in ("recall_at_1", "map_at_50", "decision_accuracy"):
        print(f"{key:22}{r['global'][key]:>10.3f}{r['fused'][key]:>10.3f}")
    print(f"rules: global {r['global_rule']}, fused {r['fused_rule']}")
    if "inlier_auroc" in r["fused"]:
        f = r["fused"]
        print(
            f"inliers on the shortlist: median {f['inliers_same_median']:.0f} same individual, "
            f"{f['inliers_other_median']:.0f} another; AUROC {f['inlier_auroc']:.3f}"
        )
    if "ms_per_query" in r:
        costs = ", ".join(f"B={k}: {v:.1f} ms" for k, v in r["ms_per_query"].items())
        print(f"cost per query (2 cores, gallery keypoints cached): {costs}")


if __name__ == "__main__":
    sys.exit(main())
