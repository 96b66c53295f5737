"""Rendering search answers as a readable table (default), JSON or CSV (SPEC 5.5).

The table gives one line a photo, the answer and whom its confidence refers to, with the
matches under it: ``dog0412  confidence 0.97  (3 of 4 gallery photos agree)``.
"""

from __future__ import annotations

import csv
import io
import json

from retrieval.query import QueryAnswer

FORMATS = ("table", "json", "csv")
UNCLASSIFIABLE = "unclassifiable"
CSV_COLUMNS = ("image", "status", "class", "confidence", "reason", "rank", "match_path")
CSV_COLUMNS += ("match_class", "score")


def _verdict(answer: QueryAnswer) -> str:
    if answer.error:
        return f"error: {answer.error}"
    d = answer.decision
    assert d is not None
    if answer.class_name is None:
        return d.reason
    return (
        f"{answer.class_name}  confidence {d.confidence:.2f}  "
        f"({d.agree} of {d.of} gallery photos agree)"
    )


def as_table(answers: list[QueryAnswer]) -> str:
    blocks = []
    for answer in answers:
        lines = [f"{answer.image}: {_verdict(answer)}"]
        for rank, m in enumerate(answer.matches, start=1):
            local = "" if m.inliers is None else f" inliers={m.inliers:<3}"
            lines.append(
                f"  {rank:>2}. {m.class_name:<24} cos={m.score:.4f} d={m.distance:.4f}{local}  "
                f"{m.path}"
            )
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _status(answer: QueryAnswer) -> str:
    if answer.error:
        return "error"
    return "accepted" if answer.class_name else UNCLASSIFIABLE


def answer_dict(answer: QueryAnswer) -> dict:
    """One answer as ``--format json`` prints it (the review log keeps it the same way)."""
    d = answer.decision
    evidence = None
    if d is not None:
        evidence = {
            "candidate": answer.predicted_name,
            "share": d.share,
            "runner_up": answer.runner_up_name,
            "runner_up_share": d.runner_up_share,
            "top_score": d.top_score,
            "agree": d.agree,
            "of": d.of,
        }
    return {
        "image": answer.image,
        "class": answer.class_name,
        "status": _status(answer),
        "confidence": None if d is None else d.confidence,
        "rule": answer.rule or None,
        "reason": answer.error or (None if d is None or d.accepted else d.reason),
        "evidence": evidence,
        "matches": [
            {
                "rank": i + 1,
                "path": m.path,
                "class": m.class_name,
                "score": m.score,
                "distance": m.distance,
                "inliers": m.inliers,
            }
            for i, m in enumerate(answer.matches)
        ],
    }


def as_json(answers: list[QueryAnswer]) -> str:
    return json.dumps([answer_dict(a) for a in answers], indent=2)


def as_csv(answers: list[QueryAnswer]) -> str:
    """One row per (query, match); a query without matches still gets one row."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for answer in answers:
        row = answer_dict(answer)
        head = [row["image"], row["status"], row["class"] or "", _num(row["confidence"])]
        head.append(row["reason"] or "")
        if not row["matches"]:
            writer.writerow([*head, "", "", "", ""])
        for m in row["matches"]:
            writer.writerow([*head, m["rank"], m["path"], m["class"], f"{m['score']:.6f}"])
    return out.getvalue()


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def render(answers: list[QueryAnswer], fmt: str) -> str:
    return {"table": as_table, "json": as_json, "csv": as_csv}[fmt](answers)
