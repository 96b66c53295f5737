"""Small JSON files written atomically, in one place.

Splits, the class map and caches are read by every later run: a crash or Ctrl-C in the middle
of a write must leave either the old file or the new one, never half of each. Everything that
writes such a file goes through ``write_json_atomic`` (temporary file in the same folder, then
``os.replace``, which is atomic on POSIX and Windows).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from retrieval.errors import InputError


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` so readers never see a partial file.

    Creates the parent folder. ``OSError`` (read-only disk, parent is a file) propagates: the
    caller knows which user-facing folder it was and says so.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


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
