"""The files of a run at its start: leftovers of saves killed mid-write are removed.

A ``kill -9`` or a power loss during a save leaves ``.<name>.<pid>.tmp`` beside the file it
would have replaced (retrieval.io.atomic_path); the next run removes those whose writer is
gone, so they neither fill the disk nor look like the run's files.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from retrieval.io import remove_stale_temps
from retrieval.serving.gallery import GALLERY_FOLDER


def remove_killed_saves(workdir: Path, runs: Iterable[Path]) -> str | None:
    """Delete the temporary files of saves killed mid-write (``kill -9``, power loss) beside
    the workdir's own files (``run.json``) and in the checkpoint and gallery folders of
    ``runs``; a line saying what went, or None."""
    folders = [f for run in runs for f in (run / "checkpoints", *run.glob(f"{GALLERY_FOLDER}*"))]
    stale = remove_stale_temps(workdir, recursive=False)
    stale += [path for folder in sorted(set(folders)) for path in remove_stale_temps(folder)]
    if not stale:
        return None
    names = ", ".join(str(path.relative_to(workdir)) for path in stale[:5])
    more = f" and {len(stale) - 5} more" if len(stale) > 5 else ""
    return f"removed {len(stale)} temporary file(s) of interrupted saves: {names}{more}"
