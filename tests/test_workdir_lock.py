"""One writer per workdir (issue 38 item 4): a second writer is refused with one line naming
the holder, the lock is free once the holder ends, however it ends (``kill -9`` included)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import evaluate
import search
import train
from retrieval.errors import InputError
from retrieval.serving.gallery import Gallery, gallery_versions
from retrieval.workdir_lock import workdir_lock

ROOT = Path(__file__).resolve().parents[1]


def refusal(workdir: Path, pid: int, command: str) -> str:
    return (
        f"workdir {workdir} is in use by pid {pid} ({command}); wait for it to finish or use "
        "another --workdir"
    )


def test_a_second_writer_is_refused_until_the_first_finishes(tmp_path: Path) -> None:
    with workdir_lock(tmp_path, "train.py --data d"):
        with pytest.raises(InputError) as err, workdir_lock(tmp_path, "search.py"):
            pass
        assert str(err.value) == refusal(tmp_path, os.getpid(), "train.py --data d")
    with workdir_lock(tmp_path, "search.py --remove x"):  # released: free again
        assert (tmp_path / ".lock").read_text() == f"{os.getpid()}\nsearch.py --remove x\n"


@pytest.mark.parametrize(
    ("cli", "args"),
    [
        (train, ["--data", "nowhere"]),
        (search, ["--remove", "amber"]),
        (search, ["--enroll", "new/"]),
        (search, ["photo.jpg", "--rebuild_gallery"]),
        (evaluate, ["--rebuild_gallery"]),
        (evaluate, ["--open_set"]),
    ],
)
def test_writers_are_refused_in_one_line(tmp_path: Path, capsys, cli, args) -> None:
    with workdir_lock(tmp_path, "train.py --epochs 30"):
        assert cli.main(["--workdir", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].endswith(refusal(tmp_path, os.getpid(), "train.py --epochs 30"))


def test_readers_take_no_lock(tmp_path: Path, capsys) -> None:
    with workdir_lock(tmp_path, "train.py"):
        assert search.main(["--workdir", str(tmp_path), "photo.jpg"]) == 2
        assert evaluate.main(["--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "in use" not in err and "best_model.pt not found" in err  # got past the lock


HOLDER = """
import sys, time
from pathlib import Path
from retrieval.serving.gallery import Gallery, gallery_versions
from retrieval.workdir_lock import workdir_lock
with workdir_lock(Path(sys.argv[1]), "train.py --fresh"):
    print("locked", flush=True)
    time.sleep(600)
"""


@contextmanager
def held_elsewhere(workdir: Path) -> Iterator[subprocess.Popen]:
    """Another process holds ``workdir``'s lock for the body, and is then killed (-9)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(workdir)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)


def test_the_lock_of_a_killed_holder_is_free_again(tmp_path: Path) -> None:
    with held_elsewhere(tmp_path) as holder:
        expected = re.escape(refusal(tmp_path, holder.pid, "train.py --fresh"))
        with pytest.raises(InputError, match=expected), workdir_lock(tmp_path, "search.py"):
            pass
    with workdir_lock(tmp_path, "search.py"):
        pass


def test_a_reader_does_not_save_over_a_writer(tmp_path: Path) -> None:
    """What a search computes on first use (a gallery, a policy, a fusion) is saved only while
    no other process writes the workdir; the process holding the lock saves as usual."""
    gallery = Gallery.build(
        np.eye(2, dtype=np.float32),
        np.array([0, 1]),
        ["a.jpg", "b.jpg"],
        class_names=["a", "b"],
        fingerprint="f",
    )
    root = tmp_path / "gallery"
    with held_elsewhere(tmp_path):
        assert not gallery.save_if_free(root, tmp_path)
        assert not gallery_versions(root)
    assert gallery.save_if_free(root, tmp_path)
    with workdir_lock(tmp_path, "search.py --enroll new/"):  # this process is the writer
        assert gallery.save_if_free(root, tmp_path)
    assert len(gallery_versions(root)) == 2
