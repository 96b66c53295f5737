"""Which run of a workdir answers searches, and which one is training (issue 38 item 3).

A run is a folder holding ``checkpoints/`` and the ``gallery/`` its best model built. The
first run of a workdir is the workdir itself (``<workdir>/checkpoints``, ``<workdir>/gallery``).
``--fresh`` over a run that has a best model trains in a new folder ``<workdir>/runs/<time>/``
instead, named as ``next`` in ``<workdir>/run.json``; searches go on reading the previous run
until the new one has its best model and its gallery, and then one atomic write of the
pointer makes it current. The previous run is kept, whole. A run interrupted before that is
resumed by the next ``train.py`` without ``--fresh``; a second ``--fresh`` leaves it on disk
and starts another.

What belongs to the workdir rather than a run stays at its top: the splits, the class map,
the enrolment journal, the results of evaluate.py, the lock.
"""

from __future__ import annotations

import time
from pathlib import Path

from retrieval.io import read_json, write_json_atomic

POINTER = "run.json"
RUNS = "runs"
CHECKPOINTS = "checkpoints"


def _pointer(workdir: Path) -> dict:
    path = Path(workdir) / POINTER
    if not path.is_file():
        return {}
    return read_json(path, fix="delete it to have searches use the workdir's first run")


def current_run(workdir: Path) -> Path:
    """The run whose best model and gallery answer searches."""
    workdir = Path(workdir)
    return workdir / _pointer(workdir).get("run", ".")


def training_run(workdir: Path) -> Path:
    """The run ``train.py`` continues: a fresh one not finished yet, else the current one."""
    workdir = Path(workdir)
    pointer = _pointer(workdir)
    return workdir / pointer.get("next", pointer.get("run", "."))


def checkpoints_dir(run: Path) -> Path:
    return Path(run) / CHECKPOINTS


def start_fresh_run(workdir: Path) -> str | None:
    """Before a ``--fresh`` run: a new run folder when the current run has files to keep (a
    line saying so), else None (the current run is empty: it is trained in place)."""
    workdir = Path(workdir)
    current = current_run(workdir)
    old = checkpoints_dir(current)
    if not (old.is_dir() and any(old.iterdir())):
        _write(workdir, {**_pointer(workdir), "next": None})
        return None
    run = _new_folder(workdir / RUNS)
    _write(workdir, {**_pointer(workdir), "next": str(run.relative_to(workdir))})
    return (
        f"--fresh: this run trains in {run}; searches keep using {current} until it has a "
        "best model and a gallery, and that run is kept"
    )


def finish_run(workdir: Path) -> str | None:
    """The run in training has its best model and gallery: make it current (one atomic
    write); a line saying so, or None when it already was."""
    workdir = Path(workdir)
    pointer = _pointer(workdir)
    if not pointer.get("next"):
        return None
    previous = current_run(workdir)
    _write(workdir, {"run": pointer["next"]})
    return f"searches now use {workdir / pointer['next']} (the previous run is kept in {previous})"


def _write(workdir: Path, pointer: dict) -> None:
    pointer = {key: value for key, value in pointer.items() if value}
    path = Path(workdir) / POINTER
    if pointer or path.is_file():
        write_json_atomic(path, pointer)


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
