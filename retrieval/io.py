"""Small JSON files written atomically, in one place.

Splits, the class map and caches are read by every later run: a crash or Ctrl-C in the middle
of a write must leave either the old file or the new one, never half of each. Everything that
writes such a file goes through ``write_json_atomic`` (temporary file in the same folder, then
``os.replace``, which is atomic on POSIX and Windows).
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from retrieval.errors import InputError


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    Whatever the body writes there (JSON, a checkpoint, a PNG) appears under ``path`` all at
    once or not at all: a crash, Ctrl-C or ``kill`` mid-write leaves the previous file intact.
    The temporary name is unique (pid + random) and the file gets the usual umask permissions
    (``mkstemp`` would make it private). Creates the parent folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        if tmp.exists():
            with tmp.open("rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


_TEMP_NAME = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$")  # atomic_path's names


def remove_stale_temps(folder: Path, *, recursive: bool = True) -> list[Path]:
    """Delete the temporary files that ``atomic_path`` writers killed mid-save left in
    ``folder`` (and its subfolders, unless ``recursive`` is False); returns them. A file whose
    writer still runs is kept."""
    stale = []
    found = Path(folder).rglob(".*.tmp") if recursive else Path(folder).glob(".*.tmp")
    for path in sorted(found) if Path(folder).is_dir() else []:
        match = _TEMP_NAME.match(path.name)
        if match and path.is_file() and not process_alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            stale.append(path)
    return stale


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs; where that cannot be asked safely (Windows) assume it does."""
    if pid == os.getpid() or os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` so readers never see a partial file.

    ``OSError`` (read-only disk, parent is a file) propagates: the caller knows which
    user-facing folder it was and says so.
    """
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def read_json(path: Path, *, fix: str = "delete it to have it rebuilt") -> Any:
    """Read a JSON file this project wrote; a damaged one is an ``InputError`` naming it.

    ``fix`` is the advice appended to the message (what the user should do with the file).
    A missing file raises ``FileNotFoundError``: callers decide whether absence is normal.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {path}: {e}; {fix}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON ({e}); {fix}") from None


def read_json_lines(path: Path) -> list[Any]:
    """The entries of an append-only JSON-lines log, oldest first ([] when there is none yet).
    A torn line (a writer killed mid-append) was never confirmed, and is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries


def append_json_line(path: Path, entry: Any) -> None:
    """Append ``entry`` as one line, flushed and fsync'd (the folder too when the log is new),
    so it is confirmed once this returns. After a torn line the entry starts a line of its own."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a+b") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell():
            handle.seek(-1, os.SEEK_END)
            torn = handle.read(1) != b"\n"
            handle.seek(0, os.SEEK_END)
            if torn:
                handle.write(b"\n")
        handle.write(json.dumps(entry, ensure_ascii=False).encode("utf-8") + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
    if new and os.name == "posix":
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
