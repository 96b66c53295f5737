"""The enrolment journal: every enrol and remove a user made, the source of truth a gallery is
rebuilt from (issue 38 item 1).

A gallery is a cache of the train split plus these changes, embedded by one model: retraining
or ``--rebuild_gallery`` builds the train split afresh and replays the journal, so months of
confirmed sightings survive a new model. ``<workdir>/enrolments.jsonl`` is shared by the
workdir's galleries (plain and flip-TTA) and by every run. Each entry is appended and fsync'd
before the gallery that holds it is saved; the gallery records how many entries it holds, so
one killed between the two catches up at its next open. A torn last line (a kill mid-append)
is an entry that was never confirmed, and is ignored.

Entries: ``{"event": "enroll", "photos": [[path, label], ...]}``, ``{"event": "remove",
"class": name}``, ``{"event": "remove_photos", "paths": [...]}``, and ``{"event":
"restore", "position": p}`` (the gallery went back to what the first ``p`` entries made).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from retrieval.serving.gallery import now

JOURNAL = "enrolments.jsonl"


def journal_path(workdir: Path) -> Path:
    return Path(workdir) / JOURNAL


def read_entries(workdir: Path) -> list[dict]:
    """The confirmed entries, oldest first ([] when nothing was ever enrolled)."""
    path = journal_path(workdir)
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:  # a kill mid-append: that entry was never confirmed
            break
    return entries


def append_entry(workdir: Path, entry: dict) -> int:
    """Append ``entry`` (stamped with the time) durably; returns the journal's length after it."""
    path = journal_path(workdir)
    entries = read_entries(workdir)
    line = json.dumps({**entry, "time": now()}) + "\n"
    with open(path, "a+b") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() and _torn_tail(path):
            f.truncate(_confirmed_bytes(path))  # drop a torn line so the new one parses
        f.write(line.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())
    return len(entries) + 1


def effective(entries: list[dict]) -> list[dict]:
    """The enrol and remove entries still in force, oldest first: a ``restore`` entry takes
    the list back to what it was after the first ``position`` entries."""
    states: list[list[dict]] = [[]]  # states[i]: in force after entries[:i]
    for entry in entries:
        if entry["event"] == "restore":
            states.append(list(states[int(entry["position"])]))
        else:
            states.append([*states[-1], entry])
    return states[-1]


def pending(entries: list[dict], applied: int) -> list[dict] | None:
    """The entries a gallery holding the first ``applied`` must still replay, or None when
    its state is no prefix of the journal's (it must be rebuilt from the journal)."""
    held, wanted = effective(entries[:applied]), effective(entries)
    if wanted[: len(held)] != held:
        return None
    return wanted[len(held) :]


def _confirmed_bytes(path: Path) -> int:
    data = path.read_bytes()
    return data.rfind(b"\n") + 1


def _torn_tail(path: Path) -> bool:
    return not path.read_bytes().endswith(b"\n")
