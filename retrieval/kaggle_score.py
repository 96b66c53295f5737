"""Scoring a pairs submission the way Kaggle re-ID competitions do, on labels you hold out.

Identity-balanced mAP: for every query image, its gallery images are ranked by the submitted
similarity; AP is computed with "same identity" as relevant; APs are averaged per identity,
then over identities, so rare individuals weigh as much as common ones.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from retrieval import metrics
from retrieval.errors import InputError


def holdout_pairs(images: list[str]) -> pd.DataFrame:
    """Every ordered pair of distinct images, in the Kaggle ``test.csv`` layout."""
    rows = [(a, b) for a in images for b in images if a != b]
    frame = pd.DataFrame(rows, columns=["query_image", "gallery_image"])
    frame.insert(0, "row_id", np.arange(len(frame)).astype(str))
    return frame


def identity_balanced_map(
    pairs: pd.DataFrame, similarity: np.ndarray, labels: dict[str, str]
) -> tuple[float, dict[str, float]]:
    """(identity-balanced mAP, per-identity mean AP) of ``similarity`` (one value per row).

    Queries with no other image of their identity among their gallery rows are skipped, as
    they have no relevant item to rank (``metrics.identity_balanced_map``'s rule).
    """
    if len(similarity) != len(pairs):
        raise InputError(f"{len(similarity)} similarities for {len(pairs)} pairs")
    missing = sorted(set(pairs["query_image"]) - set(labels))
    if missing:
        raise InputError(f"no label for {len(missing)} query image(s), e.g. {missing[:3]}")
    frame = pairs.assign(similarity=np.asarray(similarity, dtype=np.float64))
    names = sorted(set(labels.values()))
    ap, identity, scorable = [], [], []
    for query, rows in frame.groupby("query_image", sort=True):
        ranked = rows.sort_values("similarity", ascending=False, kind="stable")
        relevant = ranked["gallery_image"].map(labels).to_numpy() == labels[query]
        ap.append(metrics.average_precision(relevant))
        identity.append(names.index(labels[query]))
        scorable.append(bool(relevant.any()))
    balanced, per_class = metrics.identity_balanced_map(
        np.array(ap), np.array(identity), np.array(scorable, dtype=bool)
    )
    return balanced, {names[c]: value for c, value in per_class.items()}
