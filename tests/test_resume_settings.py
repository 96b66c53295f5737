"""A resume continues the run it resumes: its stored settings, unless flags say otherwise."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_TRAIN_ARGS, train_tiny

import train
from retrieval import checkpoint as ckpt
from retrieval.config import LEGACY_INPUT_NORM, RunConfig, stored_run_values
from retrieval.errors import InputError
from retrieval.run_folder import checkpoints_dir, current_run


def _stored_config(workdir) -> dict:
    """The config of the workdir's current run (a --fresh run trains in a folder of its own)."""
    return ckpt.load_checkpoint(checkpoints_dir(current_run(workdir)) / ckpt.LATEST)["config"]


def test_a_bare_rerun_resumes_with_the_settings_the_run_was_started_with(tmp_path, capsys):
    options = ("--margin", "0.2", "--triplet_weight", "0.5", "--seed", "7", "--no_hflip")
    _, workdir = train_tiny(tmp_path, epochs=2, extra=options)
    capsys.readouterr()
    # nothing but the workdir and a longer run: data, backbone, loss and seed come from the run
    assert train.main(["--workdir", str(workdir), "--epochs", "3", "--num_workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "resuming with the settings in" in out and "at epoch 3" in out
    config = _stored_config(workdir)
    assert config["train"]["epochs"] == 3  # the flag given now
    assert config["loss"]["margin_rad"] == 0.2 and config["loss"]["triplet_weight"] == 0.5
    assert config["data"]["seed"] == 7 and config["data"]["hflip"] is False
    assert config["model"]["backbone"] == "test_efficientnet"
    assert config["data"]["image_size"] == 48


def test_flags_given_now_override_the_stored_ones_and_fresh_ignores_them(tmp_path, capsys):
    data, workdir = train_tiny(tmp_path, epochs=2, extra=("--margin", "0.2"))
    argv = ["--data", str(data), "--workdir", str(workdir), *TINY_TRAIN_ARGS]
    assert train.main([*argv, "--epochs", "3", "--margin", "0.4"]) == 0
    assert _stored_config(workdir)["loss"]["margin_rad"] == 0.4
    capsys.readouterr()
    assert train.main([*argv, "--epochs", "2", "--warmup_epochs", "1", "--fresh"]) == 0
    assert "resuming with the settings" not in capsys.readouterr().out
    assert _stored_config(workdir)["loss"]["margin_rad"] == 0.5  # the built-in default


def test_stored_values_leave_out_the_machine_and_fill_in_legacy_defaults(tmp_path):
    raw = RunConfig().to_dict()
    raw["train"].update(device="cuda", num_workers=16, accum_steps=4, use_bf16=True)
    del raw["model"]["input_norm"]  # written before the key existed
    raw["loss"]["a_key_from_another_version"] = 1
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    values = stored_run_values(path)
    assert not {"device", "num_workers", "accum_steps", "use_bf16", "workdir"} & set(values)
    assert "a_key_from_another_version" not in values
    assert values["input_norm"] == LEGACY_INPUT_NORM
    assert values["margin_rad"] == raw["loss"]["margin_rad"]


def test_hflip_turns_an_inherited_no_hflip_back_on_and_contradictions_are_refused(tmp_path):
    _, workdir = train_tiny(tmp_path, epochs=1, extra=("--no_hflip",))
    base = ["--workdir", str(workdir), "--num_workers", "0"]
    assert train.main([*base, "--epochs", "2", "--hflip"]) == 0
    assert _stored_config(workdir)["data"]["hflip"] is True
    assert train.main([*base, "--epochs", "3", "--hflip", "--no_hflip"]) == 2


@pytest.mark.parametrize(
    ("stored_p", "stored_accum", "kept"),
    [(16, 1, False), (4, 4, False), (12, 1, True), (16, None, True)],
    ids=["auto-1", "auto-4", "explicit", "older-config"],
)
def test_a_p_the_machine_chose_is_chosen_again_and_one_a_user_gave_is_kept(
    tmp_path, stored_p, stored_accum, kept
):
    raw = RunConfig().to_dict()
    raw["train"].update(batch_p=stored_p, accum_steps=stored_accum)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    assert ("batch_p" in stored_run_values(path)) is kept


def test_the_stored_config_records_the_accumulation_the_machine_chose(tmp_path):
    _, workdir = train_tiny(tmp_path, epochs=1)
    stored = json.loads((workdir / "checkpoints" / "config.json").read_text())["train"]
    assert stored["accum_steps"] == 1 and stored["batch_p"] == 4  # TINY_TRAIN_ARGS' P


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"], ids=["corrupt", "not-a-mapping"])
def test_an_unreadable_stored_config_names_the_file_and_the_way_out(tmp_path, text):
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(InputError, match=r"config\.json cannot be read.*--fresh"):
        stored_run_values(path)


def test_a_resumed_run_trains_to_the_weights_of_an_uninterrupted_one(tmp_path):
    # loader workers: their own random states restart with each run, so only keyed
    # augmentation (retrieval.data.dataset.KeyedDataset) makes the two runs see the same pixels
    workers = ("--num_workers", "2")
    _, whole = train_tiny(tmp_path / "whole", epochs=3, extra=workers)
    _, split = train_tiny(tmp_path / "split", epochs=2, extra=workers)
    assert train.main(["--workdir", str(split), "--epochs", "3", *workers]) == 0
    latest = [
        ckpt.load_checkpoint(w / "checkpoints" / ckpt.LATEST)["model"] for w in (whole, split)
    ]
    assert latest[0].keys() == latest[1].keys()
    assert all(torch.equal(latest[0][name], latest[1][name]) for name in latest[0])
