"""The files of a run in ``<workdir>/checkpoints`` at its start: leftovers of killed saves are
removed, and ``--fresh`` puts the previous run's files aside instead of mixing them in.

A fresh run writes ``checkpoint_epoch_10.pt`` only at epoch 10, so an older run's periodic
checkpoints (and its log, its latest state) would otherwise sit beside the new ones as if they
were the same run's. They are moved to ``checkpoints/previous/<time>/``, never deleted.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from retrieval import checkpoint as ckpt
from retrieval.io import remove_stale_temps
from retrieval.serving.gallery import GALLERY_FOLDER
from retrieval.training.frozen_candidate import TRAINED

PREVIOUS = "previous"
RUN_FILES = (ckpt.LATEST, TRAINED, "train_log.csv", "config.json")


def remove_killed_saves(workdir: Path) -> str | None:
    """Delete the temporary files of saves killed mid-write (``kill -9``, power loss) in the
    checkpoint and gallery folders; a line saying what went, or None."""
    folders = [workdir / "checkpoints", *sorted(workdir.glob(f"{GALLERY_FOLDER}*"))]
    stale = [path for folder in folders for path in remove_stale_temps(folder)]
    if not stale:
        return None
    names = ", ".join(str(path.relative_to(workdir)) for path in stale[:5])
    more = f" and {len(stale) - 5} more" if len(stale) > 5 else ""
    return f"removed {len(stale)} temporary file(s) of interrupted saves: {names}{more}"


def archive_previous_run(checkpoints: Path) -> str | None:
    """Move the previous run's files to ``checkpoints/previous/<time>/`` before a fresh run;
    a line saying where, or None when there was no previous run.

    ``best_model.pt`` is linked (or copied) there and also stays in place: it and its gallery
    keep answering searches until the new run saves its own best model.
    """
    moved = [checkpoints / name for name in RUN_FILES if (checkpoints / name).is_file()]
    moved += sorted(checkpoints.glob("checkpoint_epoch_*.pt"))  # ckpt.periodic_name
    best = checkpoints / ckpt.BEST
    if not moved and not best.is_file():
        return None
    target = _new_folder(checkpoints / PREVIOUS)
    for path in moved:
        path.replace(target / path.name)
    if best.is_file():
        try:
            os.link(best, target / best.name)  # the new run's save replaces, never rewrites
        except OSError:  # no hard links on this file system
            shutil.copy2(best, target / best.name)
    return (
        f"--fresh: the previous run's checkpoints and log are kept in {target} "
        f"({len(moved) + best.is_file()} file(s))"
    )


def _new_folder(parent: Path) -> Path:
    """``parent/<YYYYmmdd-HHMMSS>``, with a suffix when two runs start in the same second."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        folder = parent / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
    raise FileExistsError(f"{parent} has too many runs started at {stamp}")
