"""The decision path measured on real data (issue 35): every candidate rule, the rule val
chooses with its calibrated confidence and threshold, and the peers' rules, on one set of
embeddings.

For each query the product decides with ``retrieval.serving.decide`` under the policy that
``retrieval.calibration.policy.choose_policy`` picks on the val split (never test). Beside it,
on the same embeddings: every candidate rule at full coverage, PyTorch Metric Learning's
majority of the top k (``AccuracyCalculator``-style k-NN vote) and wildlife-tools'
``KnnClassifier(k=1)``. With held-out individuals (dogfacenet), the open set: the
new-individual check chosen on val (held-out val classes, ``retrieval.calibration.open_set``)
applied to test photos of known dogs mixed with photos of dogs never trained on.

    python bench/decision_bench.py --dataset dogfacenet --classes 0 --kind floor \
        --image_size 256 --out runs/decision
    python bench/decision_bench.py --dataset dogs_kaggle --kind trained \
        --model runs/ablation/dogs_kaggle/imprint/seed1/checkpoints/best_model.pt \
        --cell runs/ablation/dogs_kaggle/imprint/seed1
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablation_data import DATASETS, dataset_records
from ablation_score import _model

from retrieval.calibration.open_set import (
    choose_open_set_policy,
    choose_unknown_classes,
    open_set_answers,
    simulate_open_set,
)
from retrieval.calibration.policy import CANDIDATES, SEED_RULE, choose_policy, score_rule
from retrieval.data.transforms import build_eval_transform
from retrieval.device import prepare_environment
from retrieval.embed import extract_embeddings
from retrieval.open_set_report import open_set_report
from retrieval.report.selective import selective_report
from retrieval.serving.decide import decide
from retrieval.serving.evidence import array_evidence
from retrieval.serving.rules import QueryEvidence
from retrieval.workspace import inference_plan

PML_K = 5  # PyTorch Metric Learning's k-NN majority vote, as in its AccuracyCalculator
TARGET_FAR = 0.05


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=sorted(DATASETS), default="dogfacenet")
    p.add_argument("--data_root", default="../shared/data")
    p.add_argument("--classes", type=int, default=0, help="dogfacenet: dogs (0: all)")
    p.add_argument("--open_classes", type=int, default=60, help="dogfacenet: dogs held out")
    p.add_argument("--kind", choices=["floor", "trained"], default="floor")
    p.add_argument("--model", help="checkpoint of --kind trained")
    p.add_argument("--cell", help="workdir whose splits/ to use (default: under --out)")
    p.add_argument("--backbone", default="tf_efficientnet_lite0", help="the floor's backbone")
    p.add_argument("--image_size", type=int, default=256)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="runs/decision")
    p.add_argument("--json", help="write the results here too")
    return p


def _embed(args, records_by_split: dict, cache: Path) -> dict[str, np.ndarray]:
    """Embeddings of every split, cached beside the cell (embedding is the slow part)."""
    if cache.exists():
        stored = np.load(cache)
        if all(k in stored for k in records_by_split):
            return {k: stored[k] for k in records_by_split}
    plan = inference_plan("auto")
    model_file = Path(args.model) if args.model else None
    model, size, _ = _model(args.kind, model_file, plan, args.image_size, args.backbone)
    out = {}
    for name, records in records_by_split.items():
        out[name] = extract_embeddings(
            model, records, transform=build_eval_transform(size), plan=plan, desc=name
        )
    np.savez(cache, **out)
    return out


def _peer_rows(evidence: QueryEvidence, truth: np.ndarray) -> dict[str, float]:
    """The peers' rules on the same hits: PML majority of the top k (ties: the class whose
    best hit ranks first), wildlife-tools KnnClassifier(k=1)."""
    majority = []
    for labels in evidence.hit_labels[:, :PML_K]:
        counts = Counter(int(c) for c in labels if c >= 0)
        top = max(counts.values())
        majority.append(next(int(c) for c in labels if counts.get(int(c)) == top))
    return {
        f"PML majority of top {PML_K}": float(np.mean(np.array(majority) == truth)),
        "wildlife-tools KnnClassifier(k=1)": float(np.mean(evidence.hit_labels[:, 0] == truth)),
    }


def _open_set(x, labels, val_labels, test_labels, policy, n_classes, seed) -> dict:
    """The check chosen on val (held-out val classes), applied to test known + never-seen."""
    unknown = choose_unknown_classes(np.unique(val_labels), fraction=0.2, seed=seed)
    val_data = simulate_open_set(labels["train"], x["train"], val_labels, x["val"], unknown)
    val_answers = open_set_answers(val_data, policy, n_classes)
    checked = choose_open_set_policy(val_answers, policy, TARGET_FAR)
    queries = np.vstack([x["test"], x["held_out"]])
    q_labels = np.concatenate([test_labels, labels["held_out"]])
    never = np.unique(labels["held_out"])
    data = simulate_open_set(labels["train"], x["train"], q_labels, queries, never)
    before = open_set_answers(data, policy, n_classes)  # closed-set policy, no check
    after = before.with_policy(checked)
    report = open_set_report(after, checked.threshold, TARGET_FAR)
    sel = selective_report(after.decisions, after.query_labels, checked)
    return {
        "n_known": report.n_known,
        "n_new": report.n_unknown,
        "auroc_confidence_closed_set_policy": open_set_report(before, 1.0, TARGET_FAR).to_dict()[
            "auroc_confidence"
        ],
        "auroc_confidence": report.auroc_confidence,
        "auroc_top1_cosine": report.auroc_top1_cosine,
        "new_given_a_known_name": report.false_accept_rate,
        "known_accepted": report.known_accept_rate,
        "accuracy_on_accepted_known": report.accuracy_on_accepted_known,
        "decision": sel.decision_dict(),
        "coverage_at_accuracy": sel.coverage_at_accuracy,
        "open_set_calibrator": checked.evidence["open_set"]["calibrator"],
    }


def main(argv: list[str] | None = None) -> int:
    prepare_environment()
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    data = DATASETS[args.dataset](
        Path(args.data_root), out, classes=args.classes, open_classes=args.open_classes
    )
    cell = Path(args.cell) if args.cell else out / data.name / f"{args.kind}-seed{args.seed}"
    records = dataset_records(data, cell, seed=args.seed)
    p = records.prepared
    splits = {"train": p.train, "val": p.val, "test": p.test}
    if records.held_out:
        splits["held_out"] = list(records.held_out)
    names = sorted({r.label for rs in splits.values() for r in rs})
    index = {n: i for i, n in enumerate(names)}
    labels = {k: np.array([index[r.label] for r in rs], dtype=np.int64) for k, rs in splits.items()}
    x = _embed(args, splits, cell / f"decision_embeddings_{args.kind}_{args.image_size}.npz")
    n = len(names)

    def evidence(name: str) -> QueryEvidence:
        return array_evidence(x[name], x["train"], labels["train"], n, need_means=True)

    val_ev, test_ev = evidence("val"), evidence("test")
    policy = choose_policy(val_ev, labels["val"])
    test_decisions = decide(test_ev, policy)
    sel = selective_report(test_decisions, labels["test"], policy)
    rules = {
        rule.describe(): {
            "val": score_rule(rule, val_ev, labels["val"])["accuracy"],
            "test": score_rule(rule, test_ev, labels["test"])["accuracy"],
        }
        for rule in CANDIDATES
    }
    result = {
        "dataset": data.name,
        "kind": args.kind,
        "model": args.model,
        "image_size": args.image_size,
        "seed": args.seed,
        "n": {k: len(v) for k, v in labels.items()},
        "recall_at_1_test": float(np.mean(test_ev.hit_labels[:, 0] == labels["test"])),
        "chosen_rule": policy.rule.describe(),
        "policy_evidence": policy.evidence,
        "seed_rule": SEED_RULE.describe(),
        "test": {**sel.decision_dict(), "coverage_at_accuracy": sel.coverage_at_accuracy},
        "rules_accuracy_at_full_coverage": rules,
        "peers_test": _peer_rows(test_ev, labels["test"]),
    }
    if records.held_out:
        result["open_set"] = _open_set(
            x, labels, labels["val"], labels["test"], policy, n, args.seed
        )
    text = json.dumps(result, indent=2, default=float)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
