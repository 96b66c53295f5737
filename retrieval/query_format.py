"""Rendering search answers as a readable table (default), JSON or CSV (SPEC 5.5)."""

from __future__ import annotations

import csv
import io
import json

from retrieval.query import QueryAnswer

FORMATS = ("table", "json", "csv")
UNCLASSIFIABLE = "unclassifiable"


def _verdict(answer: QueryAnswer) -> str:
    if answer.error:
        return f"error: {answer.error}"
    d = answer.decision
    assert d is not None
    p_same = "" if answer.p_same is None else f"P(same individual) {answer.p_same:.2f}, "
    if answer.class_name is None:
        return f"{UNCLASSIFIABLE} ({p_same}{d.reason})"
    return f"{answer.class_name} ({p_same}confidence {d.confidence:.2f}, margin {d.margin:.2f})"


def as_table(answers: list[QueryAnswer]) -> str:
    blocks = []
    for answer in answers:
        lines = [f"{answer.image}: {_verdict(answer)}"]
        for rank, m in enumerate(answer.matches, start=1):
            lines.append(f"  {rank:>2}. {m.class_name:<24} d={m.distance:.4f}  {m.path}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _as_dict(answer: QueryAnswer) -> dict:
    d = answer.decision
    return {
        "image": answer.image,
        "class": answer.class_name,
        "status": "error"
        if answer.error
        else ("accepted" if answer.class_name else UNCLASSIFIABLE),
        "confidence": None if d is None else d.confidence,
        "p_same_individual": answer.p_same,
        "margin": None if d is None else d.margin,
        "reason": answer.error or (d.reason if d else None),
        "matches": [
            {"rank": i + 1, "path": m.path, "class": m.class_name, "distance": m.distance}
            for i, m in enumerate(answer.matches)
        ],
    }


def as_json(answers: list[QueryAnswer]) -> str:
    return json.dumps([_as_dict(a) for a in answers], indent=2)


def as_csv(answers: list[QueryAnswer]) -> str:
    """One row per (query, match); a query without matches still gets one row."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        ["image", "status", "class", "confidence", "rank", "match_path", "match_class", "distance"]
    )
    for answer in answers:
        row = _as_dict(answer)
        head = [row["image"], row["status"], row["class"] or "", _num(row["confidence"])]
        if not row["matches"]:
            writer.writerow([*head, "", "", "", ""])
        for m in row["matches"]:
            writer.writerow([*head, m["rank"], m["path"], m["class"], f"{m['distance']:.6f}"])
    return out.getvalue()


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def render(answers: list[QueryAnswer], fmt: str) -> str:
    return {"table": as_table, "json": as_json, "csv": as_csv}[fmt](answers)
