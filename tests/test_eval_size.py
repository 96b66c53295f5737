"""The inference size chosen on val after training (retrieval.eval_size, ``--eval_size``)."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from conftest import train_tiny
from PIL import Image

import evaluate
from retrieval import checkpoint as ckpt
from retrieval.data.records import ImageRecord
from retrieval.eval_size import candidate_sizes, choose_eval_size
from retrieval.inference import load_inference_model
from retrieval.input_norm import IMAGENET
from retrieval.workspace import inference_plan, open_workspace

TRAIN_SIZE = 48
COLOURS = {"a": (200, 40, 40), "b": (40, 200, 40), "c": (40, 40, 200), "d": (200, 200, 40)}


class MeanColourModel(torch.nn.Module):
    """Embeds an image as its mean colour plus image-dependent pseudo-noise whose amplitude
    depends on the input size: which size val should prefer is known by construction."""

    def __init__(self, amplitude: dict[int, float]) -> None:
        super().__init__()
        self.amplitude = amplitude
        self.input_norm = IMAGENET
        self.anchor = torch.nn.Parameter(torch.zeros(3))  # gives the pipeline a device

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        mean = images.mean(dim=(2, 3))
        noise = torch.sin(mean.sum(dim=1, keepdim=True) * torch.tensor([97.0, 131.0, 173.0]))
        return mean + self.amplitude[images.shape[-1]] * noise + self.anchor


def _records(root: Path, split: str, shades: range) -> list[ImageRecord]:
    """Solid-colour photos: resizing leaves their mean colour exactly as it is."""
    out = []
    for label, colour in COLOURS.items():
        for shade in shades:
            path = root / split / f"{label}_{shade}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (64, 64), tuple(v + 3 * shade for v in colour)).save(path)
            out.append(ImageRecord(path=path, label=label, group=f"{label}-{split}-{shade}"))
    return out


def _choose(tmp_path: Path, amplitude: dict[int, float]):
    train, val = _records(tmp_path, "train", range(0, 3)), _records(tmp_path, "val", range(3, 5))
    return choose_eval_size(
        MeanColourModel(amplitude),
        train,
        val,
        {label: i for i, label in enumerate(COLOURS)},
        train_size=TRAIN_SIZE,
        plan=inference_plan("cpu"),
        progress=False,
    )


def test_candidate_sizes_start_at_the_train_size_and_grow():
    assert candidate_sizes(224) == [224, 240, 256, 272, 288]
    assert candidate_sizes(480) == [480, 512, 544, 584, 616]
    assert candidate_sizes(TRAIN_SIZE) == [48, 56, 64]  # rounding merges the close ones


def test_a_model_that_gains_nothing_keeps_its_train_size(tmp_path):
    choice = _choose(tmp_path, {s: 0.0 for s in candidate_sizes(TRAIN_SIZE)})
    assert choice.size == TRAIN_SIZE and not choice.reason
    assert list(choice.val_map) == [48, 56, 64]  # equal scores: every size is tried
    assert len(set(choice.val_map.values())) == 1


def test_a_larger_size_is_taken_when_val_map_is_higher(tmp_path):
    choice = _choose(tmp_path, {48: 5.0, 56: 0.0, 64: 0.0})
    assert choice.val_map[56] > choice.val_map[48]
    assert choice.size == 56  # 64 ties with 56: the smaller size wins
    assert "chosen on val" in choice.describe()


def test_the_search_stops_at_the_first_size_that_scores_lower(tmp_path):
    choice = _choose(tmp_path, {48: 0.0, 56: 5.0, 64: 0.0})
    assert list(choice.val_map) == [48, 56]
    assert choice.size == TRAIN_SIZE


def test_too_few_val_photos_keep_the_train_size(tmp_path):
    train = _records(tmp_path, "train", range(0, 2))
    unknown = ImageRecord(path=train[0].path, label="never-trained", group="x")
    choice = choose_eval_size(
        MeanColourModel({}),
        train,
        [train[0], unknown],
        {label: i for i, label in enumerate(COLOURS)},
        train_size=TRAIN_SIZE,
        plan=inference_plan("cpu"),
    )
    assert choice.size == TRAIN_SIZE and choice.val_map == {}
    assert "too few" in choice.describe()


def test_training_stores_the_choice_and_search_embeds_at_it(tmp_path):
    _, workdir = train_tiny(tmp_path, epochs=2)
    best = workdir / "checkpoints" / ckpt.BEST
    state = ckpt.load_checkpoint(best)
    assert state["eval_image_size"] in candidate_sizes(TRAIN_SIZE)
    assert state["eval_size"]["size"] == state["eval_image_size"]
    assert state["image_size"] == TRAIN_SIZE  # the training size itself is kept
    loaded = load_inference_model(best, inference_plan("cpu"))
    assert loaded.image_size == state["eval_image_size"]
    ws = open_workspace(workdir, best, device="cpu")
    assert ws.gallery.fingerprint.startswith(loaded.fingerprint)
    assert evaluate.main(["--split", "val", "--workdir", str(workdir)]) == 0
    with (workdir / "results" / "benchmarks.csv").open() as handle:
        notes = next(csv.DictReader(handle))["notes"]
    assert f"eval_size={state['eval_image_size']};" in notes


def test_eval_size_train_embeds_at_the_training_size(tmp_path):
    _, workdir = train_tiny(tmp_path, epochs=2, extra=("--eval_size", "train"))
    best = workdir / "checkpoints" / ckpt.BEST
    assert "eval_image_size" not in ckpt.load_checkpoint(best)
    assert load_inference_model(best, inference_plan("cpu")).image_size == TRAIN_SIZE
