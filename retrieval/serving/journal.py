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

from pathlib import Path

from retrieval.io import append_json_line, read_json_lines
from retrieval.serving.gallery import now

JOURNAL = "enrolments.jsonl"


def journal_path(workdir: Path) -> Path:
    return Path(workdir) / JOURNAL


def read_entries(workdir: Path) -> list[dict]:
    """The confirmed entries, oldest first ([] when nothing was ever enrolled)."""
    return read_json_lines(journal_path(workdir))


def append_entry(workdir: Path, entry: dict) -> int:
    """Append ``entry`` (stamped with the time) durably; returns the journal's length after it."""
    append_json_line(journal_path(workdir), {**entry, "time": now()})
    return len(read_entries(workdir))


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
