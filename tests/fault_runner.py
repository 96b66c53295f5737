"""Test-only fork server for the fault-injection suite (issue 38 item 6): kill -9 at a chosen write.

``python tests/fault_runner.py`` imports torch, timm, faiss and the CLIs once (about 10 s on
two cores), then reads one JSON job per stdin line and answers one JSON line per job. Each job
runs in a forked child, so every kill lands on a real process that started from the same code
as ``train.py`` or ``search.py`` without paying that import again.

The child counts calls of the write primitives the package uses (``open`` for writing,
``os.replace``/``rename``/``fsync``/``unlink``/``mkdir``, ``shutil.rmtree``, ``torch.save``,
``numpy.save``/``savez``, ``faiss.write_index``) and sends itself SIGKILL at the N-th one:
``before`` the call, ``after`` it returned, or ``torn`` (a content write done, then its file cut
to half, as a write interrupted mid-way would leave it). Nothing is patched in production
code: the patches live only in the child. ``kill_after_s`` kills from the server instead, at a
time rather than at a write; ``die_in_batches`` once a DataLoader's worker processes have
delivered a batch. A dry run (no kill) writes the trace of every counted call to ``trace``.
The child leads a process group of its own, which the server then ends (``_end_group``)
unless ``end_group`` is false: a killed child's forked workers outlive it by seconds.

Jobs (``op``): ``train`` runs ``train.main(argv)`` and confirms each epoch ``save`` that
returned; ``search`` runs ``search.main`` for each argv in ``runs`` and confirms each that
returned 0; ``save`` loads the gallery at ``root`` and saves ``mutate_gallery`` steps 1 and 2,
confirming each save. Confirmations are lines in the ``confirm`` file, written with raw
``os.write`` so that they are not counted themselves.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONTENT = ("torch.save", "numpy.save", "numpy.savez", "faiss.write_index")  # can be torn
PHASES = {"content": ("before", "torn", "after"), "other": ("before", "after")}


def phases_of(kind: str) -> tuple[str, ...]:
    """Where a call of this kind can be killed: a content write also half-way through."""
    return PHASES["content" if kind in CONTENT else "other"]


def mutate_gallery(gallery, step: int, seed: int) -> None:
    """The change ``save`` jobs make before save ``step`` (1 or 2); deterministic in ``seed``,
    so the test recomputes the state each save must leave. Step 2 also sets a query expansion,
    so that save writes the expanded index too."""
    from retrieval.serving.expansion import GalleryExpansion

    rng = np.random.default_rng([seed, step])
    vectors = rng.standard_normal((3, gallery.index.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    name = f"fault{seed}-{step}"
    gallery.add_items(vectors, [name] * 3, [f"/faults/{name}/{i}.jpg" for i in range(3)])
    if step == 2:
        live = sorted(gallery.live_classes() - {f"fault{seed}-1", name})
        gallery.remove_class(live[seed % len(live)])
        gallery.set_expansion(GalleryExpansion(k=2, alpha=3.0))


class Killer:
    """Counts the calls of the wrapped primitives; SIGKILLs this process at call ``at``."""

    def __init__(self, at: int | None, phase: str | None) -> None:
        self.at, self.phase = at, phase
        self.trace: list[list[str]] = []
        self.depth = 0  # > 0 inside a counted call: np.save's own open is not counted again
        self.pid = os.getpid()  # a forked DataLoader worker inherits the patches, not the count

    def wrap(self, kind: str, real: Callable, *, torn: Callable | None = None) -> Callable:
        def counted(*args, **kwargs):
            if (
                self.depth
                or os.getpid() != self.pid
                or (kind == "open" and not _writes(args, kwargs))
            ):
                return real(*args, **kwargs)
            self.trace.append([kind, _target(args)])
            number = len(self.trace)
            if number == self.at and self.phase == "before":
                die()
            self.depth += 1
            done = False
            try:
                result = real(*args, **kwargs)
                done = True
                return result
            finally:  # a call that raised (mkdir of a folder that exists) dies after it too
                self.depth -= 1
                if number == self.at:
                    if self.phase == "torn" and done and torn is not None:
                        torn(args)
                    die()

        return counted

    def install(self) -> None:
        import faiss
        import torch

        for module, name in [(os, "replace"), (os, "rename"), (os, "fsync"), (os, "unlink")]:
            setattr(module, name, self.wrap(f"os.{name}", getattr(module, name)))
        os.mkdir = self.wrap("os.mkdir", os.mkdir)
        shutil.rmtree = self.wrap("shutil.rmtree", shutil.rmtree)
        opener = self.wrap("open", builtins.open)
        builtins.open = io.open = opener
        torch.save = self.wrap("torch.save", torch.save, torn=lambda a: _halve(a[1]))
        np.save = self.wrap("numpy.save", np.save, torn=lambda a: _halve(a[0]))
        np.savez = self.wrap("numpy.savez", np.savez, torn=lambda a: _halve(a[0]))
        faiss.write_index = self.wrap("faiss.write_index", faiss.write_index, torn=_halve_arg1)


def die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _writes(args: tuple, kwargs: dict) -> bool:
    mode = kwargs.get("mode", args[1] if len(args) > 1 else "r")
    return any(c in str(mode) for c in "wax+")


def _target(args: tuple) -> str:
    first = args[0] if args else ""
    if hasattr(first, "name") and not isinstance(first, (str, Path)):
        first = first.name  # a file handle (np.savez into atomic_path's temp)
    if not isinstance(first, (str, os.PathLike)) and len(args) > 1:
        first = args[1]  # torch.save(obj, path), faiss.write_index(index, path)
    return Path(str(first)).name if isinstance(first, (str, os.PathLike)) else type(first).__name__


def _halve(target) -> None:
    """Cut a written file (a path or an open handle) to half its length."""
    if hasattr(target, "fileno"):
        target.flush()
        os.ftruncate(target.fileno(), target.tell() // 2)
    else:
        os.truncate(target, os.path.getsize(target) // 2)


def _halve_arg1(args: tuple) -> None:
    _halve(args[1])


# ----------------------------------------------------------------------------- child side
def _confirmer(path: str) -> Callable[[str], None]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    return lambda line: os.write(fd, (line + "\n").encode())


def _run_op(job: dict, confirm: Callable[[str], None]) -> int:
    if job["op"] == "train":
        import train
        from retrieval.training.trainer import TrainingSession

        real_save = TrainingSession.save

        def confirmed_save(session, *args, **kwargs):
            real_save(session, *args, **kwargs)
            confirm(f"epoch {session.progress.next_epoch}")

        TrainingSession.save = confirmed_save
        return train.main(job["argv"])
    if job["op"] == "search":
        import search

        for number, argv in enumerate(job["runs"]):
            rc = search.main(argv)
            if rc != 0:
                return rc
            confirm(f"run {number}")
        return 0
    if job["op"] == "save":
        from retrieval.serving.gallery import Gallery

        gallery = Gallery.load(job["root"])
        for step in (1, 2):
            mutate_gallery(gallery, step, job["seed"])
            gallery.save(Path(job["root"]))
            confirm(f"save {step}")
        return 0
    raise ValueError(f"unknown op {job['op']!r}")


def _die_at_first_batch() -> None:
    """Kill this process once a DataLoader with worker processes has delivered a batch: the
    moment its forked workers are alive (``die_in_batches`` jobs)."""
    from torch.utils.data import DataLoader

    real = DataLoader.__iter__

    def iterate(loader):
        for batch in real(loader):
            if loader.num_workers:
                die()
            yield batch

    DataLoader.__iter__ = iterate


def _child(job: dict) -> None:
    """In the forked child: never returns."""
    rc = 70
    try:
        os.setpgid(0, 0)  # its own group: the server waits for its workers to go too
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # the job pipe is the server's
        confirm = _confirmer(job["confirm"])
        kill = job.get("kill") or [None, None]
        killer = Killer(kill[0], kill[1])
        killer.install()
        if job.get("die_in_batches"):
            _die_at_first_batch()
        rc = _run_op(job, confirm)
        if job.get("trace"):
            Path(job["trace"]).write_text(json.dumps(killer.trace))
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)


# ---------------------------------------------------------------------------- server side
def _wait(pid: int, *, kill_after_s: float | None, timeout_s: float) -> tuple[int, bool]:
    """Wait for the child, SIGKILLed at ``kill_after_s`` if it runs then: (status, timed out)."""
    start = time.monotonic()
    deadline = start + timeout_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status, False
        elapsed = time.monotonic()
        if kill_after_s is not None and elapsed - start >= kill_after_s:
            os.kill(pid, signal.SIGKILL)
            return os.waitpid(pid, 0)[1], False
        if elapsed > deadline:
            os.kill(pid, signal.SIGKILL)
            return os.waitpid(pid, 0)[1], True
        time.sleep(0.005)


def _group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of group ``pgid`` (Linux ``/proc``)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def _end_group(pgid: int, timeout_s: float = 60.0) -> int:
    """SIGKILL what is left of the child's process group (forked DataLoader or pool workers a
    kill orphaned, which would exit on their own within seconds, writing nothing), as ``kill
    -9 -PGID`` or a container stop would, and wait until it is gone; how many were left."""
    left = _group_members(pgid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while _group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return len(left)


def serve() -> None:
    sys.path.insert(0, str(ROOT))
    import faiss  # noqa: F401
    import timm  # noqa: F401
    import torch  # noqa: F401

    import search  # noqa: F401
    import train  # noqa: F401
    from retrieval import enroll, workspace  # noqa: F401
    from retrieval.serving import gallery  # noqa: F401
    from retrieval.training import run  # noqa: F401

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _child(job)
        with contextlib.suppress(OSError):  # the child is in it already, or gone
            os.setpgid(pid, pid)  # as the child does itself: whichever runs first
        status, timed_out = _wait(
            pid, kill_after_s=job.get("kill_after_s"), timeout_s=job.get("timeout_s", 300)
        )
        seconds = time.monotonic() - start
        signalled = os.WIFSIGNALED(status)
        result = {
            "seconds": seconds,
            "orphans": _end_group(pid) if job.get("end_group", True) else None,
            "killed": signalled and os.WTERMSIG(status) == signal.SIGKILL and not timed_out,
            "rc": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "timed_out": timed_out,
        }
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    serve()
