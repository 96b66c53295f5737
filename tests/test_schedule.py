"""Margin schedule and learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch

from retrieval.training.epoch_log import COLUMNS, append_epoch_row
from retrieval.training.schedule import (
    LRSchedule,
    build_optimizer,
    cosine_end_note,
    param_groups,
    phase_for_epoch,
)


@pytest.mark.parametrize(
    ("epoch", "number", "margin", "trainable"),
    [(0, 1, 0.0, False), (4, 1, 0.0, False), (5, 2, 0.5, True), (30, 2, 0.5, True)],
)
def test_phases(epoch, number, margin, trainable):
    phase = phase_for_epoch(epoch, warmup_epochs=5, margin_rad=0.5)
    assert (phase.number, phase.margin_rad, phase.backbone_trainable) == (number, margin, trainable)


def test_no_warmup_starts_in_phase_two():
    assert phase_for_epoch(0, warmup_epochs=0, margin_rad=0.3).number == 2


def _optimizer():
    return build_optimizer(
        [torch.nn.Parameter(torch.zeros(2))], name="adamw", lr=1.0, weight_decay=0
    )


def test_cosine_holds_base_lr_in_warmup_then_restarts_every_10_then_20():
    opt = _optimizer()
    schedule = LRSchedule(opt, name="cosine", warmup_epochs=2)
    schedule.step_batch(1, 0.5)  # warm-up: untouched
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0)
    schedule.step_batch(2 + 5, 0.0)  # half of the first 10-epoch cycle
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5, abs=1e-6)
    schedule.step_batch(2 + 10, 0.0)  # restart
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0)
    schedule.step_batch(2 + 20, 0.0)  # half of the second, 20-epoch cycle
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5, abs=1e-6)


def test_cosine_t0_sets_the_first_cycle():
    opt = _optimizer()
    schedule = LRSchedule(opt, name="cosine", warmup_epochs=1, t0=4)
    schedule.step_batch(1 + 2, 0.0)  # half of the first, 4-epoch cycle
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5, abs=1e-6)
    schedule.step_batch(1 + 4, 0.0)  # restart; the next cycle is 8 epochs
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0)
    schedule.step_batch(1 + 8, 0.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5, abs=1e-6)


def test_a_resumed_cosine_schedule_follows_a_new_cosine_t0():
    first = LRSchedule(_optimizer(), name="cosine", warmup_epochs=1, t0=10)
    first.step_batch(1 + 9, 0.5)
    opt = _optimizer()
    resumed = LRSchedule(opt, name="cosine", warmup_epochs=1, t0=20)
    resumed.load_state_dict(first.state_dict())
    resumed.step_batch(1 + 10, 0.0)  # half of the new 20-epoch cycle, not a restart at 10
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5, abs=1e-6)
    same = LRSchedule(opt, name="cosine", warmup_epochs=1, t0=10)
    same.load_state_dict(first.state_dict())
    same.step_batch(1 + 10, 0.0)  # unchanged t0: the saved schedule restarts as before
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("phase2", "t0"), [(10, 10), (30, 10), (70, 10), (9, 10), (14, 14), (3, 1), (1, 1)]
)
def test_no_note_when_phase_two_ends_annealed(phase2, t0):
    # on a restart boundary t0 * (2^n - 1), or one epoch before it (2% of the base lr)
    assert cosine_end_note(phase2, t0, warmup_epochs=2) is None


def test_note_when_phase_two_ends_just_after_a_restart_names_the_fixes():
    note = cosine_end_note(14, 10, warmup_epochs=2)  # train.py --epochs 16 --warmup_epochs 2
    assert "4 epochs into a 20-epoch cycle, at 90% of the base lr" in note
    assert "--epochs 12 or 32" in note and "--cosine_t0 14" in note


def test_note_inside_the_first_cycle_offers_the_longer_run_only():
    note = cosine_end_note(5, 10, warmup_epochs=5)  # stops halfway down the first cycle
    assert "at 50% of the base lr" in note
    assert "--epochs 15," in note and "--epochs 5 or" not in note


def test_plateau_halves_after_patience():
    opt = _optimizer()
    schedule = LRSchedule(opt, name="plateau", warmup_epochs=0)
    for epoch in range(7):
        schedule.step_epoch(epoch, 0.5)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)


def test_head_lr_mult_gives_the_head_its_own_group_that_the_schedule_scales_alike():
    backbone, head = [torch.nn.Parameter(torch.zeros(2))], [torch.nn.Parameter(torch.zeros(2))]
    assert len(param_groups(backbone, head, lr=1.0)) == 1  # as before: old checkpoints resume
    groups = param_groups(backbone, head, lr=1.0, head_lr_mult=10.0)
    opt = build_optimizer(groups, name="adamw", lr=1.0, weight_decay=0)
    assert [g["lr"] for g in opt.param_groups] == [1.0, 10.0]  # backbone first: it is logged
    schedule = LRSchedule(opt, name="cosine", warmup_epochs=0)
    schedule.step_batch(5, 0.0)  # half of the first cycle
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5, 5.0], abs=1e-6)


@pytest.mark.parametrize("name", ["cosine", "plateau"])
def test_warmup_lr_mult_scales_the_warmup_only_and_phase_two_starts_at_base(name):
    groups = param_groups([torch.nn.Parameter(torch.zeros(2))], [], lr=1.0, head_lr_mult=2.0)
    opt = build_optimizer(groups, name="adamw", lr=1.0, weight_decay=0)
    schedule = LRSchedule(opt, name=name, warmup_epochs=2, warmup_lr_mult=10.0)
    for epoch in (0, 1):
        schedule.start_epoch(epoch)
        schedule.step_batch(epoch, 0.5)
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([10.0, 20.0])
    schedule.start_epoch(2)  # phase 2 starts at the base rates, for plateau as for cosine
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1.0, 2.0])
    opt.param_groups[0]["lr"] = 0.25  # e.g. a plateau cut later on: left alone
    schedule.start_epoch(3)
    assert opt.param_groups[0]["lr"] == 0.25


def _epoch_lrs(schedule: LRSchedule, opt, epoch: int, batches: int) -> list[float]:
    """The rate each batch of ``epoch`` trains at, as the training loop sets it."""
    schedule.start_epoch(epoch, batches)
    rates = []
    for i in range(batches):
        rates.append(opt.param_groups[0]["lr"])
        schedule.step_batch(epoch, (i + 1) / batches)
    return rates


def test_lr_ramp_rises_linearly_over_phase_two_then_follows_the_cosine():
    plain_opt, ramp_opt = _optimizer(), _optimizer()
    plain = LRSchedule(plain_opt, name="cosine", warmup_epochs=2)
    ramped = LRSchedule(ramp_opt, name="cosine", warmup_epochs=2, ramp_epochs=2)
    for epoch in (0, 1):  # warm-up: the ramp does not touch it
        assert _epoch_lrs(ramped, ramp_opt, epoch, 4) == [1.0] * 4
    cosine = [*_epoch_lrs(plain, plain_opt, 2, 4), *_epoch_lrs(plain, plain_opt, 3, 4)]
    ramp = [*_epoch_lrs(ramped, ramp_opt, 2, 4), *_epoch_lrs(ramped, ramp_opt, 3, 4)]
    # batch j of the ramp (8 batches over 2 epochs) at (j + 1) / 8 of the cosine rate
    assert ramp == pytest.approx([c * (j + 1) / 8 for j, c in enumerate(cosine)])
    assert ramp[0] > 0  # the first batch is not wasted at rate 0
    assert _epoch_lrs(ramped, ramp_opt, 4, 4) == pytest.approx(_epoch_lrs(plain, plain_opt, 4, 4))


def test_lr_ramp_resumes_mid_ramp_and_needs_the_cosine_schedule():
    opt = _optimizer()
    schedule = LRSchedule(opt, name="cosine", warmup_epochs=1, ramp_epochs=2)
    assert _epoch_lrs(schedule, opt, 2, 4)[0] == pytest.approx(
        (1 + math.cos(math.pi * 1 / 10)) / 2 * (1 + 1 / 4) / 2  # cosine x ramp: no state
    )
    with pytest.raises(ValueError, match="cosine"):
        LRSchedule(_optimizer(), name="plateau", warmup_epochs=1, ramp_epochs=1)


@pytest.mark.parametrize("name", ["cosine", "plateau"])
def test_rescale_moves_the_present_and_the_scheduled_rates(name):
    opt = _optimizer()
    schedule = LRSchedule(opt, name=name, warmup_epochs=0)
    schedule.step_batch(5, 0.0)  # cosine: half way through the first cycle; plateau: no-op
    before = opt.param_groups[0]["lr"]
    schedule.rescale(0.1)
    assert opt.param_groups[0]["lr"] == pytest.approx(before * 0.1)
    schedule.step_batch(0, 0.0)  # cosine: back to the (new) base rate
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


def test_frozen_parameters_are_not_updated_by_the_shared_optimizer():
    frozen = torch.nn.Parameter(torch.ones(2), requires_grad=False)
    live = torch.nn.Parameter(torch.ones(2))
    opt = build_optimizer([frozen, live], name="adamw", lr=0.1, weight_decay=0.1)
    live.sum().backward()
    opt.step()
    assert torch.equal(frozen, torch.ones(2)) and not torch.equal(live.detach(), torch.ones(2))


def test_epoch_log_appends_with_one_header(tmp_path):
    path = tmp_path / "log.csv"
    row = dict.fromkeys(COLUMNS, 1.0)
    append_epoch_row(path, row)
    append_epoch_row(path, {**row, "val_map": None})
    lines = path.read_text().splitlines()
    assert lines[0].split(",") == list(COLUMNS) and len(lines) == 3


@pytest.mark.parametrize(
    ("select_on", "recall", "mean_ap", "better"),
    [
        ("recall_at_1", 0.95, 0.70, True),
        ("recall_at_1", 0.90, 0.99, False),
        ("recall_at_1", 0.92, 0.81, True),  # Recall@1 tie: mAP decides
        ("recall_at_1", 0.92, 0.80, False),
        ("map", 0.95, 0.70, False),
        ("map", 0.90, 0.99, True),
        ("map", 0.93, 0.80, True),  # mAP tie: Recall@1 decides
        ("map", 0.91, 0.80, False),
    ],
)
def test_model_selection_metric_and_its_tie_break(select_on, recall, mean_ap, better):
    from retrieval.metrics import RetrievalMetrics
    from retrieval.training.selection import Progress, is_better

    best = Progress(best_recall_at_1=0.92, best_map=0.80)
    metrics = RetrievalMetrics(recall, 1.0, mean_ap, mean_ap, {}, 10)
    assert is_better(metrics, best, select_on=select_on) is better


def test_select_on_is_validated():
    from retrieval.config import TrainConfig
    from retrieval.errors import InputError

    with pytest.raises(InputError, match="--select_on"):
        TrainConfig(select_on="loss")


def test_a_training_run_prints_the_note_for_cosine_only(capsys):
    from retrieval.config import build_run_config
    from retrieval.training.run import _print_schedule_note

    _print_schedule_note(build_run_config({"epochs": 16, "warmup_epochs": 2}))
    assert "--cosine_t0 14 (one cycle)" in capsys.readouterr().out
    for values in ({"epochs": 16, "warmup_epochs": 2, "scheduler": "plateau"}, {}):
        _print_schedule_note(build_run_config(values))  # plateau; the SPEC default 5 + 30
        assert capsys.readouterr().out == ""
