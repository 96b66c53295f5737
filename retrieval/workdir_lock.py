"""One writer per workdir: ``train.py`` and the gallery-changing modes hold ``<workdir>/.lock``.

Two writers in one workdir (two ``train.py``, or an ``--enroll`` during training) would write
the same checkpoints and gallery. The lock is an ``fcntl.flock`` on the file, which the kernel
releases when its holder exits however it ends, ``kill -9`` included, so a lock is never stale.
The file names the holder (pid and command line) for the refusal message. Readers (plain
search and evaluate) never wait for it: every file they read is replaced atomically, and what
they compute on first use is saved only if the lock is free (``may_write``).

Without ``fcntl`` (Windows) the lock is the file itself, created exclusively and removed on
exit; one left by a killed holder is named in the message, with the fix.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from retrieval.errors import InputError
from retrieval.io import process_alive

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_NAME = ".lock"
ORPHAN_WAIT_S = 30.0  # how long a dead holder's forked workers may keep the lock
_held: set[Path] = set()  # workdirs whose lock this process holds


def command_line(prog: str) -> str:
    """How the holder shows in a refusal: the command line when ``prog`` runs as a script,
    else just ``prog`` (``main([...])`` called from Python)."""
    if Path(sys.argv[0]).name == prog:
        return shlex.join([prog, *sys.argv[1:]])
    return prog


@contextmanager
def workdir_lock(workdir: Path, command: str) -> Iterator[None]:
    """Hold ``workdir``'s writer lock for the body; ``InputError`` naming the holder if another
    process holds it. ``command`` is what a refused writer is told the holder runs."""
    workdir = Path(workdir)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"--workdir {workdir} cannot be created ({err}); pick another") from None
    path = workdir / LOCK_NAME
    take = _take_flock if fcntl is not None else _take_exclusive_file
    with take(path, f"{os.getpid()}\n{command}\n"):
        _held.add(workdir.resolve())
        try:
            yield
        finally:
            _held.discard(workdir.resolve())


@contextmanager
def may_write(workdir: Path) -> Iterator[bool]:
    """For a reader about to save what it computed on first use (a gallery, a policy, a
    fusion): True when this process holds the workdir's lock or could take it for the body,
    False when another writer holds it (the reader then keeps its result in memory only, and
    the writer's save is not overwritten)."""
    workdir = Path(workdir)
    if workdir.resolve() in _held:
        yield True
        return
    holder = f"{command_line(Path(sys.argv[0]).name)} (a save)"
    with ExitStack() as stack:
        try:
            stack.enter_context(workdir_lock(workdir, holder))
        except InputError:
            yield False
            return
        yield True


@contextmanager
def _take_flock(path: Path, holder: str) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _flock_or_refuse(fd, path)
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # the file stays: unlinking a flock file races a new holder
    finally:
        os.close(fd)  # releases the lock


def _flock_or_refuse(fd: int, path: Path) -> None:
    """Take the lock, or ``InputError`` naming the holder. A holder that is dead (``kill -9``)
    can leave the lock to the worker processes it forked (a DataLoader's), which share its
    open file and exit within seconds once their parent is gone: wait for them, a while."""
    deadline = time.monotonic() + ORPHAN_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace")
            pid = holder.strip().partition("\n")[0]
            orphaned = pid.isdigit() and not process_alive(int(pid))
            if not orphaned or time.monotonic() > deadline:
                raise _in_use(path, holder) from None
            time.sleep(0.2)


@contextmanager
def _take_exclusive_file(path: Path, holder: str) -> Iterator[None]:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        error = _in_use(path, path.read_text(errors="replace"))
        raise InputError(f"{error}; if no such process runs any more, delete {path}") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(holder)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _in_use(path: Path, holder: str) -> InputError:
    pid, _, command = holder.strip().partition("\n")
    who = f"pid {pid} ({command.strip()})" if pid else "another process"
    return InputError(
        f"workdir {path.parent} is in use by {who}; wait for it to finish or use another --workdir"
    )
