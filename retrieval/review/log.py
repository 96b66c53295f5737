"""The corrections log, ``<workdir>/review/corrections.jsonl``: every review action, in order.

One JSON object a line, appended and fsync'd before the page says the action is done, so a
crash loses nothing a person already confirmed. A torn line (a kill mid-append) is an entry
that was never confirmed: it is skipped, and the next entry starts a line of its own. Entries
are never rewritten: an undo is an entry of its own, naming the one it undoes. This module
only reads and appends; applying an action to the gallery is ``retrieval.review.corrections``.

An action entry: ``{"id", "time", "answer", "photo", "action", "before", "after",
"gallery_version", "gallery_version_after", "overrode"}``: ``before``/``after`` are the
individual the gallery held the photo as (null: not in the gallery), ``gallery_version`` the
gallery the answer was given with, ``overrode`` the answer as ``search.py --format json``
gives it. An undo: ``{"action": "undo",
"undoes": id, ...}``.
"""

from __future__ import annotations

from pathlib import Path

from retrieval.io import append_json_line, read_json_lines

LOG = Path("review") / "corrections.jsonl"  # under the workdir
ACTIONS = ("confirm", "choose", "new", "unusable")
OUTCOMES = ("confirmed", "corrected", "unusable")


def log_path(workdir: Path) -> Path:
    return Path(workdir) / LOG


def read_log(workdir: Path) -> list[dict]:
    """Every confirmed entry, oldest first ([] before the first action)."""
    return read_json_lines(log_path(workdir))


def append_entry(workdir: Path, entry: dict) -> None:
    """Append ``entry`` as one line, flushed and fsync'd (``retrieval.io.append_json_line``)."""
    append_json_line(log_path(workdir), entry)


def in_effect(entries: list[dict]) -> dict[str, dict]:
    """Answer id -> its action in effect: the latest one not undone (undo pops a stack)."""
    stacks: dict[str, list[dict]] = {}
    for entry in entries:
        stack = stacks.setdefault(entry["answer"], [])
        if entry["action"] == "undo":
            if stack and stack[-1]["id"] == entry["undoes"]:
                stack.pop()
        else:
            stack.append(entry)
    return {answer: stack[-1] for answer, stack in stacks.items() if stack}


def outcome(entry: dict) -> str:
    """confirmed: the photo is now the individual the answer named (accepted, or its best
    candidate when declined); corrected: another individual; unusable."""
    if entry["after"] is None:
        return "unusable"
    return "confirmed" if entry["after"] == named(entry) else "corrected"


def named(entry: dict) -> str | None:
    """The individual the overridden answer named: accepted, or its best candidate."""
    answer = entry["overrode"]
    return answer.get("class") or (answer.get("evidence") or {}).get("candidate")


def hard_negatives(entries: list[dict]) -> list[tuple[str, str]]:
    """(photo, individual it is not) for every answer in effect that a person overrode with
    another individual: the pairs the model confused, for the next training run."""
    pairs = []
    for entry in in_effect(entries).values():
        if named(entry) and outcome(entry) == "corrected":
            pairs.append((entry["photo"], named(entry)))
    return pairs
