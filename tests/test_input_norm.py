"""The input normalisation: each backbone's own pixel statistics, ImageNet's on request."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import train_tiny
from PIL import Image
from torchvision import transforms as T

import evaluate
from retrieval import checkpoint as ckpt
from retrieval.config import RunConfig, build_run_config
from retrieval.errors import InputError
from retrieval.input_norm import IMAGENET, InputNorm, resolve_input_norm

HALF = InputNorm(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@pytest.mark.parametrize(
    ("choice", "backbone", "expected"),
    [
        ("backbone", "tf_efficientnet_lite0", HALF),  # TF port: pixels in [-1, 1]
        ("backbone", "tf_efficientnetv2_l", HALF),  # the SPEC's default backbone
        ("backbone", "test_resnet", HALF),
        ("backbone", "test_efficientnet", IMAGENET),
        ("backbone", "resnet18", IMAGENET),
        ("imagenet", "tf_efficientnet_lite0", IMAGENET),
    ],
)
def test_resolves_the_statistics_timm_records_for_the_weights(choice, backbone, expected):
    assert resolve_input_norm(choice, backbone) == expected


def test_unknown_choice_is_refused():
    with pytest.raises(ValueError, match="input_norm"):
        resolve_input_norm("inception", "resnet18")


@pytest.mark.parametrize("norm", [IMAGENET, HALF])
def test_apply_matches_torchvision_normalize(norm):
    rng = np.random.default_rng(3)
    im = Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
    reference = T.Normalize(norm.mean, norm.std)(T.ToTensor()(im))
    got = norm.apply(T.PILToTensor()(im)[None])
    assert got.dtype == torch.float32
    torch.testing.assert_close(got[0], reference, atol=1e-5, rtol=1e-5)
    with pytest.raises(TypeError, match="uint8"):
        norm.apply(reference[None])


def test_new_runs_take_the_backbones_statistics_and_stored_configs_keep_imagenet():
    assert build_run_config({}).model.input_norm == "backbone"
    stored = RunConfig().to_dict()
    del stored["model"]["input_norm"]  # a checkpoint written before the choice existed
    assert RunConfig.from_dict(stored).model.input_norm == "imagenet"
    chosen = build_run_config({"input_norm": "imagenet"}).to_dict()
    assert RunConfig.from_dict(chosen).model.input_norm == "imagenet"


def test_bad_choice_names_the_flag():
    with pytest.raises(InputError, match="--input_norm"):
        build_run_config({"input_norm": "caffe"})


def test_training_feeds_the_model_its_own_statistics_and_records_them(tmp_path):
    """test_resnet's weights expect mean and std 0.5: the two choices train on other inputs."""

    def run(name: str, *extra: str) -> tuple[float, dict, Path]:
        _, workdir = train_tiny(
            tmp_path / name, epochs=1, extra=("--backbone", "test_resnet", *extra)
        )
        with (workdir / "checkpoints" / "train_log.csv").open() as handle:
            loss = float(next(csv.DictReader(handle))["loss"])
        return loss, ckpt.load_checkpoint(workdir / "checkpoints" / "best_model.pt"), workdir

    own_loss, own, _ = run("own")
    imagenet_loss, old, workdir = run("imagenet", "--input_norm", "imagenet")
    assert (own["input_norm"], old["input_norm"]) == ("backbone", "imagenet")
    assert own_loss != imagenet_loss  # seeded runs (test_seeding.py): only the inputs differ
    assert evaluate.main(["--split", "val", "--workdir", str(workdir)]) == 0
    with (workdir / "results" / "benchmarks.csv").open() as handle:
        assert "input_norm=imagenet" in next(csv.DictReader(handle))["notes"]
