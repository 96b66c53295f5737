"""The decision path by hand: each rule's class mass, decide's answer and reasons, the
calibrator, the rule choice on val and the target-accuracy threshold."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from retrieval.calibration.confidence_fit import fit_calibrator
from retrieval.calibration.policy import CANDIDATES, SEED_RULE, choose_policy, describe_policy
from retrieval.calibration.threshold import threshold_for_accuracy, threshold_for_unknowns
from retrieval.errors import InputError
from retrieval.selective import risk_coverage
from retrieval.serving.classes import class_means, class_sizes
from retrieval.serving.confidence import Calibrator
from retrieval.serving.decide import DecisionPolicy, decide, features
from retrieval.serving.rules import QueryEvidence, Rule, class_mass, class_posterior


def toy(scores, labels, sizes, means=None) -> QueryEvidence:
    """One query's hits (best first) against a gallery with ``sizes`` photos per class."""
    return QueryEvidence(
        np.array([scores], dtype=np.float32),
        np.array([labels], dtype=np.int64),
        np.array(sizes, dtype=np.int64),
        None if means is None else np.array([means], dtype=np.float32),
    )


# class 0 has one photo, very close; class 1 has four fair ones: the 1/d vote and the nearest
# photo disagree (the DogFaceNet failure in miniature)
SPLIT = toy([0.9, 0.5, 0.5, 0.5, 0.5], [0, 1, 1, 1, 1], [1, 4], means=[0.9, 0.6])


def test_nearest_photo_by_hand() -> None:
    mass = class_mass(Rule("nearest", temperature=0.1), SPLIT)[0]
    np.testing.assert_allclose(mass, [1.0, math.exp((0.5 - 0.9) / 0.1)], rtol=1e-5)


def test_seed_vote_by_hand_outvotes_the_nearest_photo() -> None:
    d_near, d_far = math.sqrt(2 - 2 * 0.9), math.sqrt(2 - 2 * 0.5)
    mass = class_mass(SEED_RULE, SPLIT)[0]
    np.testing.assert_allclose(mass, [1 / d_near, 4 / d_far], rtol=1e-5)
    assert mass.argmax() == 1  # 4 / 1.0 > 1 / 0.447
    assert class_mass(Rule("vote_inv", top_n=20, power=16), SPLIT)[0].argmax() == 0


def test_exp_vote_by_hand() -> None:
    mass = class_mass(Rule("vote_exp", top_n=3, temperature=0.2), SPLIT)[0]
    np.testing.assert_allclose(mass, [1.0, 2 * math.exp(-0.4 / 0.2)], rtol=1e-6)


def test_mean_and_nearest_plus_mean_by_hand() -> None:
    mass = class_mass(Rule("mean", temperature=0.1), SPLIT)[0]
    np.testing.assert_allclose(mass, [1.0, math.exp(-0.3 / 0.1)], rtol=1e-5)
    both = class_mass(Rule("nearest_mean", temperature=0.1), SPLIT)[0]
    np.testing.assert_allclose(both, [1.0, math.exp((1.1 - 1.8) / 0.1)], rtol=1e-5)


def test_a_class_beyond_the_hits_is_bounded_by_the_last_hit() -> None:
    evidence = toy([0.8, 0.7], [0, 0], [2, 3], means=[0.7, 0.75])
    both = class_mass(Rule("nearest_mean", temperature=1.0), evidence)[0]
    np.testing.assert_allclose(both, [1.0, math.exp(0.7 + 0.75 - 1.5)], rtol=1e-5)
    assert class_mass(Rule("nearest"), evidence)[0, 1] == 0.0


def test_posterior_rows_sum_to_one_and_no_hit_is_zero() -> None:
    evidence = QueryEvidence(
        np.array([[0.9, 0.2], [0.0, 0.0]], dtype=np.float32),
        np.array([[0, 1], [-1, -1]]),
        np.array([1, 1]),
    )
    for rule in CANDIDATES:
        if rule.needs_means:
            continue
        post = class_posterior(rule, evidence)
        assert post[0].sum() == pytest.approx(1.0) and post[1].sum() == 0.0


def test_decide_accepts_with_support_and_rejects_with_reasons() -> None:
    calibrator = Calibrator()  # uncalibrated: the share itself
    policy = DecisionPolicy(Rule("nearest", temperature=0.1), calibrator, min_confidence=0.9)
    evidence = toy([0.9, 0.85, 0.3], [0, 0, 1], [3, 1])
    (d,) = decide(evidence, policy, class_names=["tom", "kit"])
    assert d.accepted and d.label == 0 and d.agree == 2 and d.of == 3
    assert d.confidence == pytest.approx(1 / (1 + math.exp(-6)), rel=1e-6)

    split = toy([0.9, 0.89], [0, 1], [1, 1])
    (s,) = decide(split, policy, class_names=["tom", "kit"])
    assert not s.accepted and s.predicted == 0 and s.runner_up == 1
    assert s.reason == f"unclassifiable: split between tom ({s.share:.2f}) and kit " + (
        f"({s.runner_up_share:.2f}) - reshoot"
    )

    far = toy([0.2, -0.5], [0, 1], [1, 1])
    low = DecisionPolicy(Rule("nearest"), Calibrator("isotonic", "top_score", (0, 1), (0, 1)))
    (f,) = decide(far, low, class_names=["tom", "kit"])
    assert not f.accepted and "nearest match is far (tom at cosine 0.20, confidence" in f.reason

    lead = toy([0.9, 0.7, 0.6], [0, 1, 1], [1, 2])  # the runner-up trails far: not "split"
    strict = DecisionPolicy(Rule("nearest", temperature=0.1), calibrator, min_confidence=0.99)
    (w,) = decide(lead, strict, class_names=["tom", "kit"])
    assert w.runner_up_share < w.share / 2 and "nearest match is far" in w.reason

    (none,) = decide(QueryEvidence(np.zeros((1, 0)), np.zeros((1, 0), int), np.array([0])), low)
    assert none.predicted == -1 and none.confidence == 0.0 and "no photo" in none.reason


def test_policy_round_trips_through_json() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 4)), rng.random(60) < 0.7
    fit = fit_calibrator(x, y)
    policy = DecisionPolicy(Rule("vote_exp", 10, 0.05), fit.calibrator, 0.8, 0.95, 0.3)
    back = DecisionPolicy.from_dict(json.loads(json.dumps(policy.to_dict())))
    assert back == policy
    np.testing.assert_allclose(back.calibrator(x), policy.calibrator(x))
    with pytest.raises(InputError, match="rebuild_gallery"):
        DecisionPolicy.from_dict({"rule": {"name": "nearest"}})


@pytest.mark.parametrize("seed", [0, 1])
def test_calibrators_are_monotone_in_the_evidence(seed: int) -> None:
    rng = np.random.default_rng(seed)
    share = rng.random(300)
    x = np.stack([share, share, share / 2, np.ones(300)], axis=1)
    y = rng.random(300) < share  # P(right) = share: a calibrated share
    fit = fit_calibrator(x, y)
    grid = np.linspace(0, 1, 50)
    probe = np.stack([grid, grid, grid / 2, np.ones(50)], axis=1)
    assert np.all(np.diff(fit.calibrator(probe)) >= -1e-12)
    assert set(fit.log_loss) == {"logistic", "isotonic(share)", "isotonic(top_score)"} | {
        "isotonic(margin)"
    }
    assert fit.out_of_fold.shape == (300,)


def test_threshold_reaches_the_target_on_a_synthetic_val_set() -> None:
    rng = np.random.default_rng(3)
    confidence = rng.random(500)
    correct = rng.random(500) < confidence
    choice = threshold_for_accuracy(confidence, correct, 0.9)
    accepted = confidence >= choice.min_confidence
    assert choice.met_target and correct[accepted].mean() >= 0.9
    assert choice.coverage == pytest.approx(accepted.mean())
    curve = risk_coverage(confidence, correct)  # no larger coverage keeps the target
    assert not np.any((curve.coverage > choice.coverage) & (curve.accuracy >= 0.9))


def test_an_unreachable_target_falls_back_to_the_target_itself() -> None:
    choice = threshold_for_accuracy(np.array([0.6, 0.5]), np.array([False, False]), 0.95)
    assert not choice.met_target and choice.min_confidence == 0.95 and choice.coverage == 0.0


def test_unknown_threshold_by_hand() -> None:
    unknown = np.array([0.9, 0.8, 0.8, 0.3])
    cut = threshold_for_unknowns(unknown, 0.25)  # one of four may pass: the 0.9
    assert 0.8 < cut < 0.8 + 1e-12 and (unknown >= cut).sum() == 1
    assert threshold_for_unknowns(unknown, 0.0) > 0.9


def split_val(n_ids: int = 30, seed: int = 0):
    """Val queries whose own individual has one close photo and a decoy with four fair ones."""
    rng = np.random.default_rng(seed)
    q = n_ids
    scores = np.zeros((q, 5), dtype=np.float32)
    labels = np.zeros((q, 5), dtype=np.int64)
    truth = np.arange(q)
    for i in range(q):
        scores[i] = [0.8 + 0.1 * rng.random(), 0.55, 0.54, 0.53, 0.52]
        labels[i] = [i, (i + 1) % q, (i + 1) % q, (i + 1) % q, (i + 1) % q]
    sizes = np.full(q, 4)
    return QueryEvidence(scores, labels, sizes), truth


def test_val_chooses_the_nearest_photo_where_the_seed_vote_fails() -> None:
    evidence, truth = split_val()
    policy = choose_policy(evidence, truth)
    assert features(SEED_RULE, evidence).predicted.tolist() != truth.tolist()
    assert policy.evidence["accuracy"] == 1.0 and policy.evidence["seed_rule"]["accuracy"] == 0
    assert policy.rule == Rule("nearest")  # first of the rules that tie at 1.0 and AURC 0
    text = describe_policy(policy)
    assert "nearest chosen on 30 val queries" in text and "seed rule" in text


def test_class_means_against_a_loop() -> None:
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(30, 6)).astype(np.float32)
    labels = rng.integers(-1, 4, size=30)  # -1: a removed photo; class 4 has none
    means = class_means(vectors, labels, 5)
    for c in range(5):
        total = vectors[labels == c].sum(axis=0)
        norm = np.linalg.norm(total)
        expected = total / norm if norm > 0 else np.zeros(6)
        np.testing.assert_allclose(means[c], expected, atol=1e-6)
    np.testing.assert_array_equal(class_sizes(labels, 5), [np.sum(labels == c) for c in range(5)])


def test_a_perfect_val_split_is_not_read_as_certainty() -> None:
    """55 right answers out of 55: P(right) by Laplace's rule, 56/57, not 1."""
    x = np.random.default_rng(6).random((55, 4))
    fit = fit_calibrator(x, np.ones(55, dtype=bool))
    np.testing.assert_allclose(fit.calibrator(x), 56 / 57)
    evidence, truth = split_val(55)
    assert choose_policy(evidence, truth).evidence["accuracy_stderr"] > 0.01
