"""Flank-aware flips: mirror statistics on hand-made embeddings, the policy, and the CLI check."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import train_tiny

import evaluate
from retrieval.errors import InputError
from retrieval.flips import MirrorReport, choose_flip_policy, mirror_report


def _identities(n_ids: int, per_id: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit embeddings clustered per identity: (n_ids * per_id, dim) and int labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, dim))
    labels = np.repeat(np.arange(n_ids), per_id)
    x = centres[labels] + 0.3 * rng.normal(size=(len(labels), dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


def test_a_mirror_invariant_set_keeps_its_identity_and_gets_flips():
    x, labels = _identities(6, 3, 16, seed=0)
    mirrored = x + 0.01 * np.random.default_rng(1).normal(size=x.shape)  # mirror = same photo
    report = mirror_report(x, mirrored, labels)
    assert report.n_images == 18
    assert report.mirror_similarity > 0.99 > report.positive_similarity > report.negative_similarity
    assert report.mirrored_map == pytest.approx(report.plain_map, abs=0.02)
    policy = choose_flip_policy(report)
    assert policy.augment and "keep the identity" in policy.reason
    assert "--no_hflip" not in policy.flags()


def test_mirrors_that_look_like_another_individual_turn_flips_off():
    x, labels = _identities(6, 3, 16, seed=2)
    # A mirrored flank looks like some other animal: each mirror lands in the next identity.
    other, _ = _identities(6, 3, 16, seed=2)
    mirrored = np.roll(other, 3, axis=0)
    report = mirror_report(x, mirrored, labels)
    assert report.mirrored_map < report.plain_map - 0.2
    policy = choose_flip_policy(report)
    assert not policy.augment and not policy.tta
    assert "--no_hflip" in policy.flags() and "--tta none" in policy.flags()


def test_flip_tta_is_chosen_only_when_it_measured_better():
    base = MirrorReport(10, 0.95, 0.7, 0.1, plain_map=0.80, mirrored_map=0.79, tta_map=0.85)
    assert choose_flip_policy(base).tta
    worse = MirrorReport(10, 0.95, 0.7, 0.1, plain_map=0.80, mirrored_map=0.79, tta_map=0.78)
    assert choose_flip_policy(worse).augment and not choose_flip_policy(worse).tta


def test_singletons_are_left_out_and_a_set_without_pairs_is_refused():
    x, labels = _identities(4, 2, 8, seed=3)
    with_singleton = np.vstack([x, x[:1] * -1.0])
    report = mirror_report(with_singleton, with_singleton, np.append(labels, 99))
    assert report.n_images == 8
    with pytest.raises(InputError, match="two photos"):
        mirror_report(x[::2], x[::2], labels[::2])
    with pytest.raises(InputError, match="matching shapes"):
        mirror_report(x, x[:-1], labels)


def test_evaluate_flip_check_writes_the_policy(tmp_path, capsys):
    _, workdir = train_tiny(tmp_path, epochs=2, extra=("--no_hflip",))
    assert evaluate.main(["--split", "val", "--workdir", str(workdir), "--flip_check"]) == 0
    out = capsys.readouterr().out
    assert "flip check (train+val)" in out and "train.py" in out and "note:" not in out
    saved = json.loads((workdir / "results" / "flip_check.json").read_text())
    assert saved["split"] == "train+val" and isinstance(saved["augment"], bool)
    assert saved["n_images"] >= 2 and saved["caveat"] == ""
    assert 0.0 <= saved["mirrored_map"] <= 1.0 and -1.0 <= saved["mirror_similarity"] <= 1.0
