"""The three CLIs on tiny synthetic data: train -> resume -> evaluate -> search -> pairs.

Real code end to end (timm's tiny ``test_efficientnet`` with random weights, real Faiss), so
each stage's files are the next stage's inputs, as for a user.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN_ARGS, train_tiny

import evaluate
import search
import train
from retrieval.cli import default_checkpoint
from retrieval.data.records import ImageRecord
from retrieval.pairs_query import ValSplit, tune_closed_set_on_val
from retrieval.workspace import Workspace, open_workspace

TINY = TINY_TRAIN_ARGS


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A workdir with a 3-epoch run (1 warm-up epoch) on the tiny data set."""
    return train_tiny(tmp_path_factory.mktemp("e2e"))


def read_log(workdir: Path) -> list[dict]:
    with (workdir / "checkpoints" / "train_log.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_training_writes_checkpoints_log_splits_and_gallery(trained):
    _, workdir = trained
    for name in ("best_model.pt", "latest_model.pt", "config.json"):
        assert (workdir / "checkpoints" / name).is_file()
    for name in ("train_ids.json", "val_ids.json", "test_ids.json"):
        assert (workdir / "splits" / name).is_file()
    classes = json.loads((workdir / "class_to_idx.json").read_text())
    assert list(classes) == sorted(classes) and list(classes.values()) == list(range(len(classes)))
    rows = read_log(workdir)
    assert [r["phase"] for r in rows] == ["1", "2", "2"]
    assert [float(r["margin_rad"]) for r in rows] == [0.0, 0.5, 0.5]
    assert all(0.0 <= float(r["val_recall_at_1"]) <= 1.0 for r in rows)
    assert (workdir / "gallery" / "current.json").is_file()


def test_resume_continues_from_latest(trained):
    data, workdir = trained
    argv = ["--data", str(data), "--workdir", str(workdir), "--epochs", "4", *TINY]
    assert train.main(argv) == 0
    assert [r["epoch"] for r in read_log(workdir)] == ["1", "2", "3", "4"]


def test_resume_with_another_backbone_is_refused(trained, capsys):
    data, workdir = trained
    argv = ["--data", str(data), "--workdir", str(workdir), "--epochs", "5", *TINY]
    argv[argv.index("test_efficientnet")] = "test_resnet"
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "backbone" in err[0] and "--fresh" in err[0]


def test_resume_with_another_input_norm_is_refused(trained, capsys):
    data, workdir = trained
    stored = torch.load(workdir / "checkpoints" / "latest_model.pt", weights_only=False)
    assert stored["input_norm"] == stored["config"]["model"]["input_norm"] == "backbone"
    argv = ["--data", str(data), "--workdir", str(workdir), "--epochs", "5", *TINY]
    assert train.main([*argv, "--input_norm", "imagenet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--input_norm backbone" in err[0] and "--fresh" in err[0]


def test_evaluate_writes_metrics_tables_and_figures(trained, capsys):
    _, workdir = trained
    assert evaluate.main(["--split", "test", "--workdir", str(workdir)]) == 0
    out = capsys.readouterr().out
    assert "Recall@1" in out and "identity-balanced mAP" in out
    metrics = json.loads((workdir / "results" / "test_metrics.json").read_text())
    for key in ("recall_at_1", "recall_at_5", "map", "identity_balanced_map"):
        assert 0.0 <= metrics[key] <= 1.0
    decision = metrics["decision"]
    assert set(decision) == {
        "rule",
        "accuracy_at_full_coverage",
        "target_accuracy",
        "coverage_at_target",
        "accuracy_on_accepted",
        "aurc",
        "ece",
    }
    assert 0.0 <= decision["coverage_at_target"] <= 1.0 and decision["target_accuracy"] == 0.95
    assert decision["rule"] == metrics["decision_policy"]["rule"]["name"] or "(" in decision["rule"]
    assert set(metrics["coverage_at_accuracy"]) == {"0.90", "0.95", "0.99"}
    for name in ("test_risk_coverage.png", "test_reliability.png"):
        assert (workdir / "results" / "figures" / name).is_file()
    with (workdir / "results" / "test_risk_coverage.csv").open() as handle:
        curve = list(csv.DictReader(handle))
    assert float(curve[-1]["coverage"]) == pytest.approx(1.0)
    assert "decision:" in out and "chosen on" in out  # the rule val chose is printed
    assert (workdir / "results" / "test_per_class.csv").is_file()
    with (workdir / "results" / "benchmarks.csv").open() as handle:
        row = next(csv.DictReader(handle))
    assert row["backbone"] == "test_efficientnet" and row["embedding_dim"] == "512"
    assert row["augmentation"].startswith("rrc+rot15+jitter") and "erase" not in row["augmentation"]
    assert (workdir / "results" / "figures" / "test_retrieval_grid.png").is_file()


@pytest.mark.parametrize("local_match", ["auto", "on"])
def test_evaluate_and_search_give_one_answer_for_the_same_photo(trained, capsys, local_match):
    """The decision evaluate measures is the one search prints: same class, same confidence,
    with local matching as val chose it or forced on."""
    _, workdir = trained
    wd = ["--workdir", str(workdir), "--local_match", local_match]
    assert evaluate.main(["--split", "test", *wd, "--figures=false"]) == 0
    assert "local matching: " in capsys.readouterr().out  # what val chose is printed
    with (workdir / "results" / "test_decisions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    images = [row["image"] for row in rows]
    assert search.main([*images, *wd, "--format", "json"]) == 0
    output = capsys.readouterr()
    answers = {a["image"]: a for a in json.loads(output.out)}
    if local_match == "on":  # every shown match carries its verified keypoint count
        assert "local matching: on" in output.err
        assert all(m["inliers"] is not None for a in answers.values() for m in a["matches"])
    for row in rows:
        got = answers[row["image"]]
        assert got["confidence"] == pytest.approx(float(row["confidence"]), abs=1e-5)
        assert (got["class"] or "unclassifiable") == row["answer"]
        assert got["evidence"]["candidate"] == row["candidate"]
        assert got["rule"] and (got["reason"] is None) == (got["status"] == "accepted")


def test_search_answers_images_and_reports_missing_ones(trained, capsys):
    data, workdir = trained
    image = next((data / "red").glob("*.jpg"))
    code = search.main([str(image), "missing.jpg", "--workdir", str(workdir), "--format", "json"])
    assert code == 1  # one input was missing; the other is still answered
    answers = json.loads(capsys.readouterr().out)
    by_image = {a["image"]: a for a in answers}
    found = by_image[str(image)]
    assert found["status"] in ("accepted", "unclassifiable")
    assert len(found["matches"]) == 5
    distances = [m["distance"] for m in found["matches"]]
    assert distances == sorted(distances)
    assert by_image["missing.jpg"]["status"] == "error"


def test_search_table_over_a_folder(trained, capsys):
    data, workdir = trained
    assert search.main([str(data / "blue"), "--workdir", str(workdir), "--top_k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    match_lines = [line for line in lines if re.match(r"^\s+\d+\. ", line)]
    assert len(match_lines) == 2 * len(list((data / "blue").glob("*.jpg")))


def write_pairs(folder: Path, pairs: Path) -> list[tuple[str, str, str]]:
    """Every ordered pair of the folder's images as a Kaggle pairs CSV; returns the rows."""
    images = sorted(p.name for p in folder.glob("*.jpg"))
    rows = [(f"r{i}", a, b) for i, (a, b) in enumerate((a, b) for a in images for b in images)]
    with pairs.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row_id", "query_image", "gallery_image"])
        writer.writerows(rows)
    return rows


def read_scores(submission: Path) -> tuple[list[str], list[float]]:
    with submission.open() as handle:
        got = list(csv.DictReader(handle))
    return [g["row_id"] for g in got], [float(g["similarity"]) for g in got]


def test_pairs_submission_keeps_rows_and_order(trained, tmp_path, capsys):
    data, workdir = trained
    folder = data / "green"
    pairs = tmp_path / "test.csv"
    rows = write_pairs(folder, pairs)
    for rerank in ("none", "qe", "dba", "kr"):  # "qe": the old name of dba
        out = tmp_path / f"submission_{rerank}.csv"
        argv = ["--pairs", str(pairs), "--images", str(folder), "--out", str(out)]
        assert search.main([*argv, "--workdir", str(workdir), "--rerank", rerank]) == 0
        out_text = capsys.readouterr().out
        off = ": off, val scores no setting above none" in out_text
        assert (off or "chosen on val" in out_text) == (rerank != "none")  # val decides
        row_ids, scores = read_scores(out)
        assert row_ids == [r[0] for r in rows]
        self_scores = [s for s, r in zip(scores, rows, strict=True) if r[1] == r[2]]
        other = [s for s, r in zip(scores, rows, strict=True) if r[1] != r[2]]
        assert min(self_scores) >= max(other) - 1e-6  # an image is most similar to itself
        if rerank == "none" or off:  # plain cosines
            assert all(s == pytest.approx(1.0, abs=1e-4) for s in self_scores)


def test_pairs_closed_set_blends_each_score_with_the_gallery_vote(trained, tmp_path, capsys):
    data, workdir = trained
    pairs = tmp_path / "test.csv"
    rows = write_pairs(data / "green", pairs)
    argv = ["--pairs", str(pairs), "--images", str(data / "green"), "--workdir", str(workdir)]
    assert search.main([*argv, "--out", str(tmp_path / "plain.csv")]) == 0
    assert search.main([*argv, "--out", str(tmp_path / "cs.csv"), "--closed_set"]) == 0
    out = capsys.readouterr().out
    assert "--closed_set:" in out and "val photos vote too" in out
    weight = float(re.search(r"'weight': ([0-9.]+)", out).group(1))
    plain_ids, plain = read_scores(tmp_path / "plain.csv")
    cs_ids, closed = read_scores(tmp_path / "cs.csv")
    assert cs_ids == plain_ids == [r[0] for r in rows]
    for cosine, blended in zip(plain, closed, strict=True):
        if weight == 0:  # val chose "off": the scores are the plain ones
            assert blended == pytest.approx(cosine, abs=1e-5)
            continue
        agreed = (blended - (1 - weight) * cosine) / weight  # p_a . p_b of the two photos
        assert -1e-4 <= agreed <= 1 + 1e-4


def test_closed_set_voters_skip_a_removed_class(trained, tmp_path):
    """Val photos vote beside the gallery, but never for a class --remove took out of it."""
    _, workdir = trained
    copy = tmp_path / "workdir"
    shutil.copytree(workdir, copy)

    def voters(folder: Path) -> tuple[set[int], int]:
        ws = open_workspace(folder, default_checkpoint(folder, None))
        prior = tune_closed_set_on_val(ValSplit(ws))
        return set(prior.voter_labels.tolist()), ws.gallery.class_names.index("green")

    before, green = voters(copy)
    assert green in before  # the tiny data set has val photos of green
    assert search.main(["--remove", "green", "--workdir", str(copy)]) == 0
    after, _ = voters(copy)
    assert after == before - {green}


def test_val_split_reads_gallery_photos_back_instead_of_embedding_them(trained, monkeypatch):
    """Re-ranking tunes on train + val when val has no individual twice: the train photos'
    vectors come from the gallery, equal to a fresh embedding, and only val is embedded."""
    _, workdir = trained
    ws = open_workspace(workdir, default_checkpoint(workdir, None))
    split = ValSplit(ws)
    train, val = split.prepared.train, split.prepared.val
    expected = ws.embed(train, progress=False)
    embedded: list[ImageRecord] = []
    real_embed = Workspace.embed

    def counting_embed(self, records, **kwargs):
        embedded.extend(records)
        return real_embed(self, records, **kwargs)

    monkeypatch.setattr(Workspace, "embed", counting_embed)  # the workspace is frozen
    vectors = split.embed([*train, *val], desc="test")
    assert np.allclose(vectors[: len(train)], expected, atol=1e-5)
    assert [r.path for r in embedded] == [r.path for r in val]


@pytest.mark.parametrize("flag", [["--closed_set"], ["--rerank", "kr"]])
def test_pairs_options_without_pairs_are_one_clean_line(tmp_path, capsys, flag):
    image = tmp_path / "photo.jpg"
    assert search.main([str(image), "--workdir", str(tmp_path), *flag]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--pairs" in err[0] and flag[0] in err[0]


def test_pairs_with_missing_images_lists_them(trained, tmp_path, capsys):
    _, workdir = trained
    pairs = tmp_path / "test.csv"
    pairs.write_text("row_id,query_image,gallery_image\n1,a.png,b.png\n")
    argv = ["--pairs", str(pairs), "--images", str(tmp_path), "--workdir", str(workdir)]
    assert search.main(argv) == 2
    err = capsys.readouterr().err
    assert "a.png" in err and "b.png" in err


def test_missing_data_folder_is_one_clean_line(tmp_path, capsys):
    code = train.main(["--data", str(tmp_path / "nope"), "--workdir", str(tmp_path), *TINY])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]


def test_prepare_only_prints_the_split_report(tiny_data, tmp_path, capsys):
    argv = ["--data", str(tiny_data), "--workdir", str(tmp_path / "w"), "--min_size", "32"]
    assert train.main([*argv, "--prepare_only"]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "val" in out and "test" in out
    assert (tmp_path / "w" / "splits" / "train_ids.json").is_file()


def test_flip_tta_gets_its_own_gallery_beside_the_plain_one(trained):
    _, workdir = trained
    plain = (workdir / "gallery" / "current.json").read_text()
    argv = ["--split", "val", "--workdir", str(workdir), "--tta", "flip", "--figures=false"]
    assert evaluate.main(argv) == 0
    assert (workdir / "gallery_tta_flip" / "current.json").is_file()
    assert (workdir / "gallery" / "current.json").read_text() == plain
    metrics = json.loads((workdir / "results" / "val_metrics.json").read_text())
    assert metrics["tta"] == "flip"


def test_embed_timer_counts_a_single_batch_too(trained):
    from retrieval.data.scan import scan_folder
    from retrieval.data.transforms import build_eval_transform
    from retrieval.embed import EmbedTimer, extract_embeddings
    from retrieval.inference import load_inference_model
    from retrieval.workspace import inference_plan

    data, workdir = trained
    plan = inference_plan("cpu")
    loaded = load_inference_model(workdir / "checkpoints" / "best_model.pt", plan)
    records = scan_folder(data)[:3]
    for batch_size, expected in ((64, 3), (1, 2)):  # one batch; three batches (first untimed)
        timer = EmbedTimer()
        extract_embeddings(
            loaded.model,
            records,
            transform=build_eval_transform(loaded.image_size),
            plan=plan,
            batch_size=batch_size,
            progress=False,
            timer=timer,
        )
        assert timer.images == expected and timer.images_per_s > 0


def test_search_reports_a_truncated_and_a_non_image_file_and_answers_the_rest(
    trained, tmp_path, capsys
):
    """Headers are checked first and pixels decoded once, by the embedding; a file that only
    fails to decode (truncated) is found then, reported, and the rest still answered."""
    data, workdir = trained
    good = next((data / "red").glob("*.jpg"))
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(good.read_bytes()[:-200])
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    argv = [str(good), str(truncated), str(text), "--workdir", str(workdir), "--format", "json"]
    assert search.main(argv) == 1
    answers = {a["image"]: a for a in json.loads(capsys.readouterr().out)}
    assert answers[str(good)]["status"] in ("accepted", "unclassifiable")
    assert answers[str(truncated)]["status"] == answers[str(text)]["status"] == "error"
    assert "cannot read image" in answers[str(truncated)]["reason"]


def test_a_gallery_saved_before_the_decision_policy_gets_one_chosen_on_val(
    trained, tmp_path, capsys
):
    """Format 1 stored vote thresholds and an open-set curve: it still loads, and the first
    open chooses its policy on val and saves it."""
    _, workdir = trained
    copy = tmp_path / "workdir"
    shutil.copytree(workdir, copy)
    pointer = json.loads((copy / "gallery" / "current.json").read_text())
    meta_path = copy / "gallery" / pointer["version"] / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta.pop("decision")
    meta.update(
        format=1,
        thresholds={"max_distance": 1.2, "min_margin": 0.05},
        open_set=None,
        expansion=None,
    )
    meta_path.write_text(json.dumps(meta))
    ws = open_workspace(copy, default_checkpoint(copy, None))
    assert "chosen again on val (gallery saved before the calibrated decision)" in (
        capsys.readouterr().out
    )
    assert ws.gallery.policy is not None and ws.gallery.policy.evidence["n_val_queries"] >= 2
    reloaded = json.loads((copy / "gallery" / "current.json").read_text())["version"]
    assert reloaded != pointer["version"]  # saved as a new version


def test_pairs_with_local_matching_score_on_the_fused_scale(trained, tmp_path, capsys):
    data, workdir = trained
    folder = data / "green"
    pairs = tmp_path / "test.csv"
    rows = write_pairs(folder, pairs)
    out = tmp_path / "fused.csv"
    argv = ["--pairs", str(pairs), "--images", str(folder), "--workdir", str(workdir)]
    assert search.main([*argv, "--out", str(out), "--local_match", "on"]) == 0
    assert "local matching: on" in capsys.readouterr().out
    row_ids, scores = read_scores(out)
    assert row_ids == [r[0] for r in rows]
    by_pair = {(r[1], r[2]): s for r, s in zip(rows, scores, strict=True)}
    assert all(0.0 <= s <= 1.0 for s in scores)  # P(same individual)
    assert all(by_pair[(a, b)] == pytest.approx(by_pair[(b, a)]) for a, b in by_pair)
    refused = [*argv, "--out", str(out), "--local_match", "on", "--rerank", "dba"]
    assert search.main(refused) == 2
    assert "--local_match on fuses plain cosines only" in capsys.readouterr().err
