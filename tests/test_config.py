"""Config resolution: defaults < preset < config file < flags, validation with a fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import train
from retrieval.config import RunConfig, build_run_config, load_config_file
from retrieval.errors import InputError

NO_RUN = Path(__file__).parent / "no-run-here"  # never created: nothing to resume from


def resolved(argv: list[str]) -> RunConfig:
    """The config train.py would build, away from any run in the current folder."""
    args = train.build_parser().parse_args(["--workdir", str(NO_RUN), *argv])
    return build_run_config(train.resolve_values(args), workdir=args.workdir)


def test_defaults_follow_the_spec():
    cfg = resolved([])
    assert cfg.model.backbone == "tf_efficientnetv2_l"
    assert cfg.model.embedding_dim == 512
    assert (cfg.loss.margin_rad, cfg.loss.scale, cfg.loss.warmup_epochs) == (0.5, 64.0, 5)
    assert (cfg.train.scheduler, cfg.train.patience, cfg.train.batch_k) == ("cosine", 10, 4)
    assert cfg.train.cosine_t0 == 10  # SPEC 3.3: CosineAnnealingWarmRestarts(T_0=10, T_mult=2)
    assert cfg.train.batch_p is None  # decided from the hardware plan
    assert cfg.data.image_size == 480 and cfg.data.min_size == 224 and cfg.data.hflip


def test_flags_override_preset_and_config_file(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("epochs: 3\nlr: 0.5\nscale: 48\n")
    cfg = resolved(["--preset", "demo", "--config", str(config), "--lr", "0.01", "--margin", "0.2"])
    assert cfg.model.backbone == "tf_efficientnet_lite0"  # preset
    assert cfg.train.epochs == 3 and cfg.loss.scale == 48  # config file over preset
    assert cfg.train.lr == 0.01 and cfg.loss.margin_rad == 0.2  # flags over both


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--use_bf16=false"], False),
        (["--use_bf16"], True),
        (["--use_bf16=true"], True),
        ([], None),
    ],
)
def test_boolean_flags_accept_both_forms(argv, expected):
    assert resolved(argv).train.use_bf16 is expected


def test_no_hflip_turns_flips_off():
    assert resolved(["--no_hflip"]).data.hflip is False


def test_random_erasing_is_off_unless_asked_and_old_configs_still_load():
    assert resolved([]).data.random_erasing == 0.0
    assert resolved(["--random_erasing", "0.5"]).data.random_erasing == 0.5
    old = resolved([]).to_dict()
    del old["data"]["random_erasing"]  # a checkpoint written before the flag existed
    assert RunConfig.from_dict(old).data.random_erasing == 0.0


def test_round_trip_through_dict():
    cfg = resolved(["--preset", "demo", "--workdir", "somewhere"])
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_nested_config_file_is_accepted(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(RunConfig().to_dict()))
    assert load_config_file(path)["backbone"] == "tf_efficientnetv2_l"


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"margin_rad": 30.0}, "radians"),
        ({"batch_p": 1}, "--batch_p"),
        ({"optimizer": "adam"}, "--optimizer"),
        ({"cosine_t0": 0}, "--cosine_t0"),
        ({"lr_ramp_epochs": -1.0}, "--lr_ramp_epochs"),
        ({"lr_ramp_epochs": 1.0, "scheduler": "plateau"}, "--lr_ramp_epochs needs"),
        ({"random_erasing": 1.5}, "--random_erasing"),
        ({"frozen_stages": -1}, "--frozen_stages"),
        ({"unknown_key": 1}, "unknown config keys"),
    ],
)
def test_invalid_values_name_the_flag(values, needle):
    with pytest.raises(InputError, match=needle):
        build_run_config(values)


def test_bad_config_file_is_a_clean_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(InputError, match="mapping"):
        load_config_file(path)
    with pytest.raises(InputError, match="not found"):
        load_config_file(tmp_path / "missing.yaml")


def test_data_paths_are_stored_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = resolved(["--data", "photos", "--image_root", "imgs"])
    assert cfg.data.data == str(tmp_path / "photos")
    assert cfg.data.image_root == str(tmp_path / "imgs")


def test_demo_preset_generates_its_data_under_the_workdir(tmp_path, monkeypatch):
    from retrieval.presets import materialize_preset

    monkeypatch.chdir(tmp_path)
    cfg = resolved(["--preset", "demo", "--workdir", "."])
    assert cfg.data.data == str(tmp_path / "demo_data")
    monkeypatch.setattr("retrieval.data.demo.make_demo_dataset", lambda root: root.mkdir())
    materialize_preset("demo", tmp_path, cfg.data.data)
    assert (tmp_path / "demo_data").is_dir()


@pytest.mark.parametrize(("accum", "expected"), [(1, 16), (2, 8), (4, 4), (16, 2)])
def test_classes_per_batch_follow_accumulation_unless_given(accum, expected):
    from retrieval.config import resolve_batch

    assert resolve_batch(resolved([]), accum).train.batch_p == expected
    assert resolve_batch(resolved(["--batch_p", "12"]), accum).train.batch_p == 12
