"""The ablation benchmark's pieces that need no training: its table and its data subsets."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from ablation import VARIANTS, _cells_dir, build_parser, train_argv
from ablation_data import ALL_CLASSES, DOGFACENET_CLASSES, OPEN_SET_CLASSES, Dataset, dogfacenet
from ablation_score import _model, write_table

import train
from retrieval.workspace import inference_plan


def _cell(variant: str, seed: int, value: float) -> dict:
    metrics = {key: value for key in ("val_map", "test_map", "test_map_tta", "test_map_qe")}
    metrics |= {"test_map_kr": value, "test_map_tta_qe": value, "test_map_tta_kr": value}
    mirror = {"mirror_similarity": 0.9, "plain_map": value, "mirrored_map": value, "tta_map": value}
    mirror |= {"augment": True, "tta": seed == 1}
    return {"variant": variant, "seed": seed, "metrics": metrics, "mirror": mirror}


def test_table_gives_mean_and_sample_spread_per_variant_in_order():
    results = [_cell("plain", 1, 0.90), _cell("plain", 2, 0.94), _cell("floor", 1, 0.80)]
    table = write_table(results, mode="pairs", variants=["floor", "plain", "gem"])
    main, flips = table.strip().split("\n\n")
    lines = main.splitlines()
    assert lines[0].startswith("| variant | seeds | val mAP | test mAP")
    assert lines[2].startswith("| floor | 1 | 0.800 |")
    assert lines[3].startswith("| plain | 1,2 | 0.920 ± 0.028 |")  # sd with ddof=1
    assert len(lines) == 4  # gem has no cell yet: no row
    assert flips.splitlines()[3].endswith("| flips 2/2, TTA 1/2 |")


def test_dogfacenet_subset_holds_out_whole_individuals(shared_data, tmp_path):
    data = dogfacenet(shared_data, tmp_path)
    with data.manifest.open() as handle:
        rows = list(csv.DictReader(handle))
    trained = {r["label"] for r in rows}
    held_out = {r.label for r in data.held_out}
    assert len(trained) == DOGFACENET_CLASSES and len(held_out) == OPEN_SET_CLASSES
    assert not trained & held_out
    assert all((data.image_root / r["filename"]).is_file() for r in rows)
    assert dogfacenet(shared_data, tmp_path / "again").held_out == data.held_out  # seeded


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_is_valid_train_py_flags_on_top_of_the_protocol(variant, tmp_path):
    bench = build_parser().parse_args(["--epochs", "7"])
    data = Dataset("d", tmp_path / "m.csv", tmp_path, "pairs")
    args = train.build_parser().parse_args(train_argv(bench, data, variant, seed=3))
    assert (args.seed, args.backbone, args.pretrained) == (3, "tf_efficientnet_lite0", "pypi")
    assert args.cosine_t0 == 5  # phase 2 (7 - 2 warm-up epochs) is one cosine cycle
    if variant == "probe":  # frozen for the whole run, however long the protocol
        assert args.warmup_epochs == args.epochs == 7
    if variant == "slow_backbone":  # the variant's --lr overrides the protocol's
        assert (args.lr, args.head_lr_mult) == (1e-4, 3.0)
    # The product defaults to --head_init auto; the bench pins random so that "plain" stays
    # the recipe every earlier cell was paired with, and only the imprint variants imprint.
    imprint = "imprint_centred" if "centred" in variant else "imprint"
    assert args.head_init == (imprint if "imprint" in variant else "random")
    assert args.random_erasing == (0.5 if "erasing" in variant else None)
    assert args.input_norm == ("imagenet" if variant.endswith("_imagenet") else None)


def test_dogfacenet_as_a_whole_trains_on_every_dog_but_the_held_out_ones(shared_data, tmp_path):
    data = dogfacenet(shared_data, tmp_path, classes=ALL_CLASSES, open_classes=5)
    with data.manifest.open() as handle:
        trained = {r["label"] for r in csv.DictReader(handle)}
    held_out = {r.label for r in data.held_out}
    every_dog = {d.name for d in (shared_data / "dogfacenet").iterdir() if d.is_dir()}
    assert len(held_out) == 5 and not trained & held_out
    assert trained | held_out == every_dog  # dogs with 2-4 photos train too
    assert data.name == "dogfacenet-all-5"


def test_missing_data_set_names_the_flag(tmp_path):
    with pytest.raises(SystemExit, match="--data_root"):
        dogfacenet(tmp_path, tmp_path)


def test_backbone_flag_reaches_every_cell_and_keeps_its_cells_apart(tmp_path):
    data = Dataset("d", tmp_path / "m.csv", tmp_path, "gallery")
    lite0 = build_parser().parse_args(["--out", str(tmp_path)])
    lite2 = build_parser().parse_args(
        ["--out", str(tmp_path), "--backbone", "tf_efficientnet_lite2"]
    )
    assert _cells_dir(lite0, data) == tmp_path / "d"  # where every lite0 cell already is
    assert _cells_dir(lite2, data) == tmp_path / "d" / "tf_efficientnet_lite2"
    args = train.build_parser().parse_args(train_argv(lite2, data, "imprint", seed=1))
    assert (args.backbone, args.pretrained) == ("tf_efficientnet_lite2", "pypi")
    floor, _, _ = _model("floor", None, inference_plan("cpu"), 48, "tf_efficientnet_lite2")
    assert [len(stage) for stage in floor.backbone.blocks] == [1, 3, 3, 4, 4, 5, 1]
