"""Choosing the decision policy on val: the rule, its confidence calibrator and the threshold.

Criterion (SPEC 5.3): accuracy at full coverage on the val queries, ties broken by AURC (by the
rule's own posterior share), then by the order below (simplest first). What val measured is
kept in the policy's ``evidence`` with a standard error, so a choice made on 55 photos says so.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from retrieval.calibration.confidence_fit import fit_calibrator
from retrieval.calibration.threshold import threshold_for_accuracy
from retrieval.errors import InputError
from retrieval.selective import accuracy_stderr, aurc, expected_calibration_error
from retrieval.serving.decide import TARGET_ACCURACY, DecisionPolicy, features
from retrieval.serving.rules import QueryEvidence, Rule

SEED_RULE = Rule("vote_inv", top_n=20, power=1.0)  # SPEC 5.3's original 1/d vote
CANDIDATES: tuple[Rule, ...] = (
    Rule("nearest"),
    Rule("mean"),
    Rule("nearest_mean"),
    *(Rule("vote_exp", top_n=n, temperature=t) for n in (5, 10, 20, 50) for t in (0.02, 0.05, 0.1)),
    *(Rule("vote_inv", top_n=20, power=p) for p in (1.0, 4.0, 16.0)),
)


def score_rule(rule: Rule, evidence: QueryEvidence, truth: np.ndarray) -> dict:
    """Accuracy at full coverage and AURC of ``rule`` on labelled queries."""
    f = features(rule, evidence)
    correct = f.predicted == truth
    return {
        "rule": rule.describe(),
        "accuracy": float(correct.mean()),
        "aurc": aurc(f.share, correct),
    }


def _ranked(
    evidence: QueryEvidence, truth: np.ndarray, candidates: Sequence[Rule]
) -> list[tuple[dict, Rule]]:
    """Every candidate scored, best first: val accuracy, then AURC, then the listed order."""
    truth = np.asarray(truth, dtype=np.int64)
    if truth.shape != evidence.hit_labels.shape[:1] or truth.size < 2:
        raise InputError(f"need >= 2 labelled val queries to choose a rule, got {truth.size}")
    if evidence.mean_scores is None:
        candidates = [rule for rule in candidates if not rule.needs_means]
    table = [(score_rule(rule, evidence, truth), i) for i, rule in enumerate(candidates)]
    ranked = sorted(table, key=lambda row: (-row[0]["accuracy"], row[0]["aurc"], row[1]))
    return [(row, candidates[i]) for row, i in ranked]


def best_rule_accuracy(
    evidence: QueryEvidence, truth: np.ndarray, candidates: Sequence[Rule] = CANDIDATES
) -> float:
    """The val accuracy of the rule ``choose_policy`` would choose, without fitting its
    calibrator (for comparing kinds of evidence, e.g. with and without local matches)."""
    return _ranked(evidence, truth, candidates)[0][0]["accuracy"]


def choose_policy(
    evidence: QueryEvidence,
    truth: np.ndarray,
    *,
    target_accuracy: float = TARGET_ACCURACY,
    candidates: Sequence[Rule] = CANDIDATES,
) -> DecisionPolicy:
    """The policy for labelled val queries: ``evidence`` of Q queries, ``truth`` (Q,) int."""
    truth = np.asarray(truth, dtype=np.int64)
    ranked = _ranked(evidence, truth, candidates)
    best, rule = ranked[0]
    f = features(rule, evidence)
    correct = f.predicted == truth
    fit = fit_calibrator(f.matrix(), correct)
    cut = threshold_for_accuracy(fit.out_of_fold, correct, target_accuracy)
    seed = score_rule(SEED_RULE, evidence, truth)
    n = truth.size
    acc = best["accuracy"]
    return DecisionPolicy(
        rule=rule,
        calibrator=fit.calibrator,
        min_confidence=cut.min_confidence,
        target_accuracy=target_accuracy,
        evidence={
            "n_val_queries": n,
            "accuracy": acc,
            "accuracy_stderr": accuracy_stderr(acc, n),
            "aurc": best["aurc"],
            "runners_up": [row for row, _ in ranked[1:4]],
            "seed_rule": seed,
            "calibrator": fit.calibrator.describe(),
            "cv_log_loss": fit.log_loss,
            "ece_out_of_fold": expected_calibration_error(fit.out_of_fold, correct),
            "threshold_met_target": cut.met_target,
            "val_accuracy_on_accepted": cut.accuracy,
            "val_coverage": cut.coverage,
        },
    )


def describe_policy(policy: DecisionPolicy) -> str:
    """Lines for the console: what val chose, with its uncertainty and the seed rule beside."""
    e = policy.evidence
    if not e:
        return (
            f"decision: {policy.rule.describe()}, uncalibrated (no val split was available); "
            f"accept at share >= {policy.threshold:.2f}"
        )
    seed = e["seed_rule"]
    lines = [
        f"decision: {policy.rule.describe()} chosen on {e['n_val_queries']} val queries "
        f"(accuracy {e['accuracy']:.3f} +- {e['accuracy_stderr']:.3f}; "
        f"seed rule {seed['rule']}: {seed['accuracy']:.3f})",
        f"  confidence: {e['calibrator']}; accept at >= {policy.threshold:.3f} for "
        f"{policy.target_accuracy:.0%} accuracy on accepted (val: "
        f"{e['val_accuracy_on_accepted']:.3f} on {e['val_coverage']:.0%}"
        + ("" if e["threshold_met_target"] else "; target not reached on val")
        + ")",
    ]
    if policy.unknown_min_confidence > 0:
        lines.append(
            f"  new-individual check (evaluate.py --open_set): confidence >= "
            f"{policy.unknown_min_confidence:.3f}"
        )
    return "\n".join(lines)
