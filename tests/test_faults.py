"""kill -9 at seeded points of training, enrolment and gallery saves (issue 38 item 6).

Each operation runs once without a kill (the dry run counts its writes, see
``tests/fault_runner.py``), then is killed at seeded writes and at seeded moments (``KillSet``),
each time in a fresh copy of one trained workdir.
After each kill the workdir must load (a photo search answers), the previous state must be
intact or the killed change fully applied (never half), and nothing confirmed may be lost.
"""

from __future__ import annotations

import filecmp
import os
import shutil
from pathlib import Path

import pytest
from conftest import TINY_TRAIN_ARGS, make_image, train_tiny
from fault_helpers import (
    KILLS,
    FaultServer,
    KillSet,
    Plan,
    confirmations,
    dry_run,
    files,
    killed_job,
    live_items,
    search_works,
    signature,
    versions_listed,
    wait_until_unlocked,
    which_state,
)
from fault_runner import mutate_gallery

import search
import train
from retrieval import checkpoint as ckpt
from retrieval.run_folder import checkpoints_dir, current_run, training_run
from retrieval.serving.gallery import Gallery
from retrieval.training.run_files import remove_killed_saves

pytestmark = [
    pytest.mark.faults,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="the fault runner forks (POSIX only)"),
]

ROOT = Path(__file__).resolve().parents[1]
BASE_EPOCHS, EPOCHS = 1, 2  # the trained workdir, and the killed run that continues it
EPOCHS_OF = {False: EPOCHS, True: BASE_EPOCHS}  # a killed --fresh run trains one epoch
TRAIN_KILLS = KillSet(writes=10, timed=2)  # for each of the two training jobs
NEWCOMERS = {"violet": (140, 0, 255), "teal": (0, 150, 140)}
REMOVED = "grey"  # a training class the enrolment job removes after its two enrolments


@pytest.fixture(scope="module")
def server():
    fork_server = FaultServer(ROOT)
    yield fork_server
    fork_server.close()


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict[str, Path]:
    """A workdir trained for one epoch, with its gallery, and two folders to enrol."""
    root = tmp_path_factory.mktemp("faults")
    extra = ("--device", "cpu", "--eval_size", "train")
    data, workdir = train_tiny(root, epochs=BASE_EPOCHS, extra=extra)
    # Tiny val sets saturate at epoch 1: forget its score, so that the continued run saves a
    # new best_model.pt, as a run that improves does, and the kills land around that too.
    latest = ckpt.load_checkpoint(workdir / "checkpoints" / ckpt.LATEST)
    latest["progress"].update(best_recall_at_1=-1.0, best_map=-1.0, best_epoch=-1)
    ckpt.save_atomic(latest, workdir / "checkpoints" / ckpt.LATEST)
    folders = {}
    for n, (name, colour) in enumerate(NEWCOMERS.items()):
        for j in range(3):
            make_image(
                root / name / name / f"{name}-g{j}_1.jpg", seed=700 + 10 * n + j, colour=colour
            )
        folders[name] = root / name
    return {"data": data, "workdir": workdir, "photo": next(data.glob("blue/*.jpg")), **folders}


def copy_workdir(base: dict[str, Path], folder: Path) -> Path:
    workdir = folder / "work"
    shutil.copytree(base["workdir"], workdir, symlinks=True)
    return workdir


# ------------------------------------------------------------------------------ training
def train_argv(base: dict[str, Path], workdir: Path, epochs: int, *, fresh=False) -> list[str]:
    """Continue the base run to ``epochs``, or (``fresh``) train a new run beside it. No
    eval-size choice: it costs six embedding passes and writes only one more atomic
    ``best_model.pt`` replace, a kind of write the runs make anyway."""
    return [
        "--data", str(base["data"]), "--workdir", str(workdir), "--epochs", str(epochs),
        "--warmup_epochs", "1", "--eval_size", "train", "--device", "cpu", *TINY_TRAIN_ARGS,
        *["--fresh"][: int(fresh)],
    ]  # fmt: skip


@pytest.fixture(scope="module")
def train_plans(server, base, tmp_path_factory) -> dict[bool, Plan]:
    """The dry runs of both training jobs, by ``fresh``."""
    plans = {}
    for fresh in (False, True):
        folder = tmp_path_factory.mktemp("train_dry")
        workdir = copy_workdir(base, folder)
        job = {"op": "train", "argv": train_argv(base, workdir, EPOCHS_OF[fresh], fresh=fresh)}
        plans[fresh] = dry_run(server, job, folder, f"train-fresh={fresh}", TRAIN_KILLS)
    return plans


def kill_training(server, base, plan: Plan, folder: Path, k: int, *, fresh: bool):
    """The killed job's workdir, where the kill was, and the epochs whose save returned."""
    point = plan.points[k]
    workdir = copy_workdir(base, folder)
    job = {"op": "train", "argv": train_argv(base, workdir, EPOCHS_OF[fresh], fresh=fresh)}
    killed_job(server, job, point, folder, plan)
    saved = [int(line.split()[1]) for line in confirmations(folder)]
    return workdir, point.describe(plan.trace), saved


def finish_training(capsys, base, workdir: Path, where: str, *, epochs: int) -> None:
    """``train.py`` without ``--fresh`` finishes what was killed: the current run has all its
    epochs, one log row each, and answers a search; no temporary file is left anywhere."""
    assert train.main(train_argv(base, workdir, epochs)) == 0, f"{where}: train.py fails"
    checkpoints = checkpoints_dir(current_run(workdir))
    assert ckpt.load_checkpoint(checkpoints / ckpt.LATEST)["progress"]["next_epoch"] == epochs
    rows = (checkpoints / "train_log.csv").read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in rows] == [str(e) for e in range(1, epochs + 1)], where
    search_works(capsys, base["photo"], workdir, where)
    assert not list(workdir.rglob("*.tmp")), f"{where}: temporary files survive a resumed run"


@pytest.mark.parametrize("k", range(len(TRAIN_KILLS.ids)), ids=TRAIN_KILLS.ids)
def test_kill_during_training(server, base, train_plans, tmp_path, capsys, k):
    """``train.py`` continuing the one-epoch workdir to epoch 2, killed anywhere, leaves a
    workdir whose saved epochs are all still there (``latest_model.pt`` at or past the last
    epoch whose save returned), whose best model loads, where a photo search answers, and
    which a resumed ``train.py`` finishes. A kill between the new ``best_model.pt`` and its
    gallery leaves a gallery older than the run's best model: the search rebuilds it."""
    workdir, where, saved = kill_training(
        server, base, train_plans[False], tmp_path, k, fresh=False
    )
    checkpoints = checkpoints_dir(workdir)
    latest = ckpt.load_checkpoint(checkpoints / ckpt.LATEST)
    assert latest["progress"]["next_epoch"] >= max([BASE_EPOCHS, *saved]), f"{where}: epoch lost"
    ckpt.load_checkpoint(checkpoints / ckpt.BEST)
    search_works(capsys, base["photo"], workdir, where)
    finish_training(capsys, base, workdir, where, epochs=EPOCHS)


@pytest.mark.parametrize("k", range(len(TRAIN_KILLS.ids)), ids=TRAIN_KILLS.ids)
def test_kill_during_fresh_training(server, base, train_plans, tmp_path, capsys, k):
    """``train.py --fresh`` over the trained workdir, killed anywhere: until the new run has
    its best model and gallery, searches answer from the previous run, whose best model and
    gallery are as they were; the new run's saved epochs stay resumable, and ``train.py``
    without ``--fresh`` finishes it (issue 38 item 3)."""
    workdir, where, saved = kill_training(server, base, train_plans[True], tmp_path, k, fresh=True)
    if saved:
        latest = ckpt.load_checkpoint(checkpoints_dir(training_run(workdir)) / ckpt.LATEST)
        assert latest["progress"]["next_epoch"] >= max(saved), f"{where}: epoch lost"
    if current_run(workdir) == workdir:  # not switched yet: the previous run, untouched
        best = Path("checkpoints") / ckpt.BEST
        assert filecmp.cmp(workdir / best, base["workdir"] / best, shallow=False), where
        gallery = Gallery.load(workdir / "gallery")
        assert live_items(gallery) == live_items(Gallery.load(base["workdir"] / "gallery"))
    search_works(capsys, base["photo"], workdir, where)
    finish_training(capsys, base, workdir, where, epochs=BASE_EPOCHS)


# ----------------------------------------------------------------------------- enrolment
def enrol_runs(base: dict[str, Path], workdir: Path) -> list[list[str]]:
    wd = ["--workdir", str(workdir), "--device", "cpu"]
    return [
        ["--enroll", str(base["violet"]), *wd],
        ["--enroll", str(base["teal"]), *wd],
        ["--remove", REMOVED, *wd],
    ]


def enrol_states(base: dict[str, Path]) -> list[dict[str, str]]:
    """The gallery's items after each of the ``enrol_runs``, the first being the base's."""
    states = [live_items(Gallery.load(base["workdir"] / "gallery"))]
    for name in NEWCOMERS:
        photos = {str(p): name for p in sorted((base[name] / name).glob("*.jpg"))}
        states.append({**states[-1], **photos})
    states.append({p: c for p, c in states[-1].items() if c != REMOVED})
    return states


@pytest.fixture(scope="module")
def enrol_plan(server, base, tmp_path_factory):
    folder = tmp_path_factory.mktemp("enrol_dry")
    workdir = copy_workdir(base, folder)
    job = {"op": "search", "runs": enrol_runs(base, workdir)}
    plan = dry_run(server, job, folder, "enrol", KILLS)
    assert live_items(Gallery.load(workdir / "gallery")) == enrol_states(base)[-1]
    return plan


@pytest.mark.parametrize("k", range(len(KILLS.ids)), ids=KILLS.ids)
def test_kill_during_enrolment(server, base, enrol_plan, tmp_path, capsys, k):
    """``search.py --enroll A``, ``--enroll B``, ``--remove grey`` killed anywhere: the saved
    gallery holds exactly the changes that returned success, or those and the killed one in
    full (never part of one); the gallery versions are listed; the next open (a photo search)
    answers and holds the same, or also the killed change it replays from the enrolment
    journal; running the changes not yet in the gallery again then completes them all.
    Temporary files the kill left behind break none of this, and a ``train.py`` start
    (``remove_killed_saves``) clears them."""
    point = enrol_plan.points[k]
    where = point.describe(enrol_plan.trace)
    workdir = copy_workdir(base, tmp_path)
    runs = enrol_runs(base, workdir)
    killed_job(server, {"op": "search", "runs": runs}, point, tmp_path, enrol_plan)
    confirmed = len(confirmations(tmp_path))
    states = enrol_states(base)
    gallery_dir = workdir / "gallery"
    saved = which_state(live_items(Gallery.load(gallery_dir)), states, confirmed, where)
    versions_listed(capsys, workdir, where)
    search_works(capsys, base["teal"] / "teal" / "teal-g0_1.jpg", workdir, where)
    opened = which_state(live_items(Gallery.load(gallery_dir)), states, confirmed, where)
    assert opened >= saved, f"{where}: opening the workdir undid a change"
    for argv in runs[opened:]:
        assert search.main(argv) == 0, f"{where}: {argv[:2]} run again failed"
    assert live_items(Gallery.load(gallery_dir)) == states[-1], where
    remove_killed_saves(workdir, [workdir])
    assert not list(gallery_dir.rglob("*.tmp")), f"{where}: a temporary file is not cleared"


# ------------------------------------------------------------------------- gallery saves
@pytest.fixture(scope="module")
def save_states(base) -> list[dict]:
    """The gallery's signature before the two saves of a ``save`` job and after each."""
    gallery = Gallery.load(base["workdir"] / "gallery")
    states = [signature(gallery)]
    for step in (1, 2):
        mutate_gallery(gallery, step, seed=0)
        states.append(signature(gallery))
    return states


@pytest.fixture(scope="module")
def save_plan(server, base, save_states, tmp_path_factory):
    folder = tmp_path_factory.mktemp("save_dry")
    root = copy_workdir(base, folder) / "gallery"
    plan = dry_run(server, {"op": "save", "root": str(root), "seed": 0}, folder, "save", KILLS)
    assert signature(Gallery.load(root)) == save_states[-1]
    return plan


@pytest.mark.parametrize("k", range(len(KILLS.ids)), ids=KILLS.ids)
def test_kill_during_gallery_save(server, base, save_plan, save_states, tmp_path, capsys, k):
    """Two ``Gallery.save`` in a row (items added; then a class removed, items added and a
    query expansion set) killed anywhere: the gallery loads as it was before the killed save
    or as that save wrote it, bit for bit, never a mix; the versions are listed; a photo
    search answers; saving again from what loaded reaches the final state."""
    point = save_plan.points[k]
    where = point.describe(save_plan.trace)
    workdir = copy_workdir(base, tmp_path)
    root = workdir / "gallery"
    killed_job(server, {"op": "save", "root": str(root), "seed": 0}, point, tmp_path, save_plan)
    confirmed = len(confirmations(tmp_path))
    gallery = Gallery.load(root)
    done = which_state(signature(gallery), save_states, confirmed, where)
    versions_listed(capsys, workdir, where)
    search_works(capsys, base["photo"], workdir, where)
    gallery = Gallery.load(root)  # the search may have saved its calibration
    for step in range(done + 1, len(save_states)):
        mutate_gallery(gallery, step, seed=0)
        gallery.save(root)
    assert signature(Gallery.load(root)) == save_states[-1], where
    remove_killed_saves(workdir, [workdir])
    assert not list(root.rglob("*.tmp")), f"{where}: a temporary file is not cleared"


# ------------------------------------------------------------------------ the writer lock
def test_a_writer_killed_while_embedding_leaves_the_workdir_free(server, base, tmp_path):
    """``search.py --enroll`` killed once its embedding DataLoader has delivered a batch (its
    worker processes alive): enrolling again at once must not be refused as 'in use'."""
    from retrieval.device import plan_runtime, probe_device

    if plan_runtime(probe_device(device="cpu")).num_workers == 0:
        pytest.skip("one CPU: inference loads images without worker processes")
    workdir = copy_workdir(base, tmp_path)
    job = {"op": "search", "runs": enrol_runs(base, workdir)[:1], "die_in_batches": True}
    result = server.run({**job, "end_group": False, **files(tmp_path)})
    assert result["killed"], (tmp_path / "child.log").read_text()[-2000:]
    try:
        assert search.main(enrol_runs(base, workdir)[0]) == 0
    finally:
        wait_until_unlocked(workdir)
